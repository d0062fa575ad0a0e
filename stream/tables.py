"""The item tables a scorer reads: the catalog and its title vectors (`stream.textindex`, kept current
from the change log), and neighbours, item counts and trending from the live tables
(`stream.livestore`), merged over their shares and cached for at most `max_age_s`.
"""

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from rankstream.stream.catalogstore import mark_seen
from rankstream.stream.errors import RankstreamError, StoreError
from rankstream.stream.live import (
    ItemCounts,
    LiveParams,
    SalesView,
    merge_counts,
    merge_neighbours,
    merge_trending,
    parse_neighbours,
    parse_trend,
)
from rankstream.stream.livestore import COUNTS, TOP, read_merged_parts, read_meta, read_trends
from rankstream.stream.redis_client import REDIS_ERRORS
from rankstream.stream.retrieval import MergeHead
from rankstream.stream.signals import RECENT_ITEMS
from rankstream.stream.store import Store
from rankstream.stream.textindex import CatalogFollower

log = logging.getLogger(__name__)

_CACHE_MAX = 200_000
T = TypeVar("T")
P = TypeVar("P")


@dataclass
class _Entry(Generic[P, T]):
    read_at: float  # time.monotonic() of the last read
    raw: list[str | None]  # each share's value as read, to skip parsing what did not change
    parsed: list[P | None]  # each share's value parsed (None: empty or unreadable), reused while its raw holds
    value: T


class Tables:
    """One scorer's view of the tables in Redis. Reads are cached per item for at most `max_age_s`, so
    what the tables job wrote is served within that much more time, at one pipelined read per chunk."""

    def __init__(
        self,
        store: Store,
        max_age_s: float = 0.5,
        *,
        encoder: tuple[str, int] | None = None,
        catalog_every_s: float = 0.25,
        replica: str = "",
        merge: MergeHead | None = None,
    ) -> None:
        """`encoder`: (version, dim) of the text encoder whose title vectors to index, None for none.
        `replica`: the name under which to report how far this copy of the catalog is (`SEEN_KEY`).
        `merge`: the learned merge the candidates come from (`stream.retrieval`), None for none."""
        self._store = store
        self.merge = merge
        self.max_age_s = max_age_s
        version, dim = encoder or ("", 1)  # no encoder: a follower of titles only (no vectors under "")
        self.indexed = encoder is not None
        self._follower = CatalogFollower(store.client, version, dim, follow=self.indexed)
        self._catalog_every_s = catalog_every_s
        self._catalog_read_at = -1e18
        self._replica = replica
        self.topic = ""
        self.partitions = 0
        self.params = LiveParams()
        self._nb: dict[str, _Entry[dict[str, float], list[str]]] = {}
        self._counts: dict[str, _Entry[ItemCounts, SalesView]] = {}
        self._trending: tuple[float, list[str]] = (-1e18, [])

    @property
    def catalog(self) -> dict[str, str]:
        """Item id -> title, as of the last `refresh_catalog`."""
        return self._follower.catalog

    async def load(self) -> None:
        """Read the catalog and where the live tables are; RankstreamError if `load` never ran."""
        await self._follower.load()
        self._catalog_read_at = time.monotonic()
        if not self.catalog:
            raise RankstreamError("the catalog in Redis is empty: run `rankstream load` first")
        try:
            self.topic, self.partitions, self.params = await read_meta(self._store.client)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading the live tables' meta failed: {exc}") from exc

    async def refresh_catalog(self, *, now: bool = False) -> int:
        """Apply the catalog's changes (new, retitled, removed items) logged since the last call, at most
        every `catalog_every_s` unless `now`; how many change entries were applied."""
        at = time.monotonic()
        if not now and at - self._catalog_read_at < self._catalog_every_s:
            return 0
        self._catalog_read_at = at
        applied = await self._follower.refresh()
        if applied and self._replica:
            last_id, applied_at = self.catalog_position
            await mark_seen(self._store.client, self._replica, last_id, int((applied_at or 0) * 1000))
        return applied

    @property
    def catalog_position(self) -> tuple[str, float | None]:
        """(newest change entry applied, when: unix s), for operators and `bench catalog`."""
        return self._follower.last_id, self._follower.applied_at

    def text_neighbours(self, history: Sequence[str], n: int) -> list[str]:
        """Up to `n` items whose titles are closest to those of the `RECENT_ITEMS` newest history items
        (max cosine), best first, none of `history`; empty without an encoder or a recent item's vector."""
        if n <= 0 or not self.indexed:
            return []
        index = self._follower.index
        recent = [index.vector(i) for i in history[:RECENT_ITEMS] if i in index]
        if not recent:
            return []
        return index.nearest(np.stack(recent), n, exclude=set(history))

    def text_cosine(self, history: Sequence[str], items: Sequence[str]) -> dict[str, float]:
        """Each of `items` that has a vector: its title's similarity to the user (max cosine to the
        `RECENT_ITEMS` newest history items' vectors, as `text_neighbours` ranks); empty without them."""
        if not self.indexed or not items:
            return {}
        index = self._follower.index
        recent = [index.vector(i) for i in history[:RECENT_ITEMS] if i in index]
        if not recent:
            return {}
        return index.similarity(np.stack(recent), items)

    async def neighbours_for(self, items: list[str]) -> dict[str, list[str]]:
        """Co-visitation neighbours of `items`, merged over the shares, best first."""
        n = self.params.neighbours
        return await self._cached(self._nb, items, TOP, parse_neighbours, lambda parts: merge_neighbours(parts, n))

    async def counts_for(self, items: list[str]) -> dict[str, SalesView]:
        """Each item's sales over all shares (`stats_at` turns them into signal inputs)."""
        return await self._cached(
            self._counts, items, COUNTS, ItemCounts.parse, lambda parts: SalesView(merge_counts(parts))
        )

    async def trending(self) -> list[str]:
        fetched, value = self._trending
        now = time.monotonic()
        if now - fetched <= self.max_age_s:
            return value
        raw = await self._read(read_trends(self._store.client, self.topic, self.partitions))
        trends = []
        for p, r in enumerate(raw):
            try:
                trends.append(parse_trend(r)[1] if r else [])
            except ValueError as exc:
                log.error("share %s:%d: trend unreadable, left out (run `rankstream load`): %r", self.topic, p, exc)
        self._trending = (now, merge_trending(trends, self.params.trending))
        return self._trending[1]

    async def _cached(
        self,
        cache: dict[str, "_Entry[P, T]"],
        items: Iterable[str],
        field_key: int,
        parse: Callable[[str], P],
        merge: Callable[[list[P | None]], T],
    ) -> dict[str, T]:
        now = time.monotonic()
        wanted = list(dict.fromkeys(items))
        stale = [it for it in wanted if it not in cache or now - cache[it].read_at > self.max_age_s]
        if stale:
            if len(cache) > _CACHE_MAX:
                cache.clear()  # bounded memory; everything is re-read within max_age_s anyway
            per_share = await self._read(
                read_merged_parts(self._store.client, self.topic, self.partitions, field_key, stale)
            )
            for k, it in enumerate(stale):
                raw = [values[k] for values in per_share]
                old = cache.get(it)
                if old is not None and old.raw == raw:
                    old.read_at = now  # most items did not change since the last read: no parsing, no merge
                    continue
                # A hot item changes in one share or two between reads (a share is one partition's
                # users): parse only those, reuse the others' parsed values.
                reuse = old is not None and len(old.raw) == len(raw)
                parsed = [
                    old.parsed[s] if reuse and old.raw[s] == r else self._parse(parse, it, r)  # type: ignore[union-attr]
                    for s, r in enumerate(raw)
                ]
                cache[it] = _Entry(now, raw, parsed, merge(parsed))
        return {it: cache[it].value for it in wanted}

    def _parse(self, parse: Callable[[str], P], item: str, raw: str | None) -> P | None:
        if not raw:
            return None
        try:
            return parse(raw)
        except ValueError as exc:  # a value no share writes: serve the other shares without it, say so
            log.error("live tables: %s is unreadable in a share, left out (run `rankstream load`): %r", item, exc)
            return None

    async def _read(self, call):  # type: ignore[no-untyped-def]
        try:
            return await call
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading the live tables failed: {exc}") from exc

    def sample_titles(self, n: int = 50) -> list[str]:
        """Some catalog titles, for warming a new model up at serving shapes."""
        return [t for _, t in zip(range(n), self.catalog.values(), strict=False)]
