"""The live tables replayed offline: the shares the tables job keeps, moved by the same `Share.apply` in
the same order, read through the same merges, so training and evaluation see at each basket exactly
what the scorer would have read from Redis at that moment.
"""

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from rankstream.data.prepare import Prepared
from rankstream.stream.live import (
    ItemCounts,
    LiveParams,
    Share,
    merge_counts,
    merge_neighbours,
    merge_trending,
    partition_of,
)

Event = tuple[str, str, int]  # user, item, ts in epoch ms


class LiveReplay:
    """Shares for `partitions` partitions, as the tables job holds them after the same events.

    Merged reads are cached per item and dropped when a share changes that item, so reading before
    every basket of a split costs what changed since the last read.
    """

    def __init__(self, params: LiveParams, partitions: int) -> None:
        self.params = params
        self.shares = [Share(params) for _ in range(partitions)]
        self._partition: dict[str, int] = {}
        self._nb: dict[str, list[str]] = {}
        self._counts: dict[str, ItemCounts] = {}
        self._trending: list[str] | None = None
        self.applied = 0

    def apply(self, user: str, item: str, ts_ms: int) -> None:
        p = self._partition.get(user)
        if p is None:
            p = self._partition[user] = partition_of(user, len(self.shares))
        share = self.shares[p]
        share.apply(user, item, ts_ms)
        self.applied += 1
        dirty = share.take_dirty()
        for it in dirty.neighbours:
            self._nb.pop(it, None)
        for it in dirty.counts:
            self._counts.pop(it, None)
        if dirty.trend:
            self._trending = None

    def apply_all(self, events: Iterable[Event]) -> None:
        for user, item, ts_ms in events:
            self.apply(user, item, ts_ms)

    def neighbours(self, items: Iterable[str]) -> dict[str, list[str]]:
        out = {}
        for it in items:
            nb = self._nb.get(it)
            if nb is None:
                nb = self._nb[it] = merge_neighbours(
                    (s.neighbours.get(it) for s in self.shares), self.params.neighbours
                )
            out[it] = nb
        return out

    def counts(self, items: Iterable[str]) -> dict[str, ItemCounts]:
        out = {}
        for it in items:
            c = self._counts.get(it)
            if c is None:
                c = self._counts[it] = merge_counts(s.counts.get(it) for s in self.shares)
            out[it] = c
        return out

    def trending(self) -> list[str]:
        if self._trending is None:
            self._trending = merge_trending((s.trend for s in self.shares), self.params.trending)
        return self._trending


def ts_ms(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def replay_events(frame: pd.DataFrame) -> Sequence[Event]:
    """The frame's rows as (user, item, epoch ms), sorted by time, stable: the order `replay` produces."""
    ordered = frame.sort_values("ts", kind="stable")
    return list(
        zip(ordered["user_id"].tolist(), ordered["item_id"].tolist(), ts_ms(ordered["ts"]).tolist(), strict=True)
    )


def history_before(prepared: Prepared, split: str = "test") -> pd.DataFrame:
    """The interactions before `split` starts: what the live tables are seeded with for a stream of it."""
    start = prepared.split.valid_end if split == "test" else prepared.split.train_end
    frame = prepared.interactions
    return frame[frame["ts"] < start]


def seeded(prepared: Prepared, partitions: int, params: LiveParams | None = None, split: str = "test") -> LiveReplay:
    """The shares `rankstream load` writes: every event before `split`, replayed."""
    rp = LiveReplay(params or LiveParams(), partitions)
    rp.apply_all(replay_events(history_before(prepared, split)))
    return rp
