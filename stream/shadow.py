"""Shadow scoring: a sample of users also scored by another version, off the hot path, never written.

After a chunk's real lists are written, the sampled users of the chunk are handed to one background
task that scores them with the shadow version and keeps each would-be list in memory. When such a
user's next events arrive, each is checked against the would-be list (shadow hit-rate) and against the
list actually shown (the same events, so the two hit-rates are paired). The figures go to the
live-quality hash as `<shadow version>:shadow_events`, `:shadow_hits` and `:shadow_served_hits`.

Its cost is bounded twice: one shadow model call at a time (a chunk offered while one runs is skipped),
and the shadow's busy time may not exceed `max_share` of the wall time since it started (plus a
one-second allowance), so a slow shadow version cannot take the scorer's CPU. A user's events go to one
partition, so their next events normally reach the replica that holds their would-be list; after a
rebalance some are not checked, which only makes the sample smaller.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from rankstream.stream import batch as b
from rankstream.stream import metrics as m
from rankstream.stream.canary import in_share
from rankstream.stream.ranker import Ranker
from rankstream.stream.scoring import score_users
from rankstream.stream.settings import Settings
from rankstream.stream.tables import Tables

log = logging.getLogger(__name__)

_MAX_USERS = 100_000  # would-be lists kept (oldest forgotten first)
_BURST_S = 1.0


class ShadowScorer:
    def __init__(self, ranker: Ranker, sample: float, settings: Settings, tables: Tables, max_share: float) -> None:
        self.ranker = ranker
        self.sample = sample
        self.settings = settings
        self.tables = tables
        self.max_share = max_share
        self._lists: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._busy_s = 0.0
        self.scored_users = 0
        self.skipped_users = 0

    @property
    def version(self) -> str:
        return self.ranker.version

    def sampled(self, user_id: str) -> bool:
        return in_share(user_id, self.sample, f"shadow:{self.version}")

    def check(self, chunk: Sequence[b.UserPlan], by_user: Mapping[str, Sequence[b.Valid]]) -> dict[str, int]:
        """Counters for the chunk's events of users with a would-be list: shadow hits beside the served ones."""
        events = hits = served_hits = 0
        for p in chunk:
            would_be = self._lists.get(p.user_id)
            if would_be is None or not p.offsets:
                continue
            checked = set(p.offsets)
            for v in by_user[p.user_id]:
                if v.offset in checked:
                    events += 1
                    hits += v.event.item_id in would_be
            served_hits += p.hits
        if not events:
            return {}
        m.SHADOW_EVENTS.labels(self.version).inc(events)
        m.SHADOW_HITS.labels(self.version).inc(hits)
        v = self.version
        return {f"{v}:shadow_events": events, f"{v}:shadow_hits": hits, f"{v}:shadow_served_hits": served_hits}

    def offer(self, chunk: Sequence[b.UserPlan], neighbours: Mapping[str, Sequence[str]]) -> None:
        """Score the chunk's sampled users in the background, if the shadow has room now."""
        plans = [p for p in chunk if self.sampled(p.user_id)]
        if not plans:
            return
        busy = self._task is not None and not self._task.done()
        if busy or self._busy_s > self.max_share * (time.monotonic() - self._started) + _BURST_S:
            self.skipped_users += len(plans)
            m.SHADOW_SKIPPED.labels(self.version).inc(len(plans))
            return
        self._task = asyncio.create_task(self._score(plans, neighbours))

    async def _score(self, plans: list[b.UserPlan], neighbours: Mapping[str, Sequence[str]]) -> None:
        t0 = time.monotonic()
        try:
            scored = await score_users(self.ranker, plans, neighbours, self.tables, self.settings)
        except Exception as exc:  # noqa: BLE001 - the shadow never fails the scorer
            log.warning("shadow %s could not score %d users: %s", self.version, len(plans), exc)
            return
        finally:
            self._busy_s += time.monotonic() - t0
        for w in scored.writes:
            self._lists[w.user_id] = frozenset(i for i, _ in w.items)
            self._lists.move_to_end(w.user_id)
        while len(self._lists) > _MAX_USERS:
            self._lists.popitem(last=False)
        self.scored_users += len(scored.writes)

    async def close(self) -> None:
        """Wait for the call in flight (its session may be released next)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
