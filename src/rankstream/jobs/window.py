"""A recompression window: the clicks a cycle learns from (from the prepared files or read from Kafka), and
the split of its baskets into older ones to train on and the newest ones held out for the gate."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import pandas as pd

from rankstream.data.prepare import Prepared
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import ClickEvent

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    """The clicks a cycle learns from, and everything users' histories may draw on."""

    source: str
    start: datetime
    end: datetime
    events: pd.DataFrame  # user_id, item_id, ts (UTC), event[, basket]
    history: pd.DataFrame  # the same columns; includes `events`


def window_start(end: datetime, since: datetime | None, days: float | None) -> datetime:
    """`since` when given, else `days` before `end`."""
    if since is not None:
        return since
    if days is None:
        raise ConfigError("give the window as --days N (N > 0) or --since TIME")
    return end - timedelta(days=days)


def window_from_files(prepared: Prepared, *, since: datetime | None, days: float | None) -> Window:
    """The prepared interactions from the window start to the newest event."""
    frame = prepared.interactions
    if frame.empty:
        raise ConfigError(f"{prepared.out_dir}: no interactions; run `rankstream prepare`")
    end = frame["ts"].max().to_pydatetime()
    start = window_start(end, since, days)
    events = frame[frame["ts"] >= pd.Timestamp(start)]
    return Window(f"files:{prepared.out_dir}", start, end, events, frame)


def window_from_events(
    prepared: Prepared, events: Sequence[ClickEvent], *, start: datetime, end: datetime, source: str
) -> Window:
    """Click events (read from Kafka) as a window; histories also draw on the prepared interactions."""
    frame = pd.DataFrame(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "ts": pd.to_datetime([e.ts for e in events], utc=True).astype("datetime64[us, UTC]"),
            "event": [e.event for e in events],
        }
    )
    base = prepared.interactions[["user_id", "item_id", "ts", "event"]]
    # A replay of stored data sends events the files already hold; count each click once.
    history = pd.concat([base, frame], ignore_index=True).drop_duplicates(["user_id", "item_id", "ts"])
    return Window(source, start, end, frame, history)


def split_holdout(instances: Sequence[T], share: float) -> tuple[list[T], list[T]]:
    """(older, newest): the newest `share` of the instances (time order) is held out."""
    n_hold = math.ceil(len(instances) * share)
    if n_hold < 1 or n_hold >= len(instances):
        raise ConfigError(
            f"the window holds {len(instances)} usable baskets: too few to train on and hold some out; "
            "widen it with --days or an earlier --since"
        )
    return list(instances[:-n_hold]), list(instances[-n_hold:])
