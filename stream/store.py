"""Redis: the catalog and candidate tables the scorer reads, and the per-user lists it writes.

Key schema (version 1; documented in the README for frontends):
  rec:{<user>}   JSON top-k list, with TTL         — what frontends read
  hist:{<user>}  hash: items (newest first), p, o, ts — the scorer's own per-user state and write fence
  rs:catalog     hash item_id -> title
  rs:nb          hash item_id -> comma-joined co-visitation neighbours, best first
  rs:trending    comma-joined item ids, best first
  rs:itemstats   hash item_id -> JSON sales statistics (stream.signals.ItemStats), read by the signals
  rs:quality     hash: <model version>:events / :hits — live hit-rate of the lists each version wrote
The `{<user>}` braces are literal Redis Cluster hash tags: both keys a write touches live in one slot.
"""

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rankstream.stream.errors import StoreError
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient, connect, is_cluster
from rankstream.stream.signals import ItemStats

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CATALOG_KEY = "rs:catalog"
NEIGHBOURS_KEY = "rs:nb"
TRENDING_KEY = "rs:trending"
ITEM_STATS_KEY = "rs:itemstats"
QUALITY_KEY = "rs:quality"

# One atomic step per user: skip if this state is not newer than what is stored (a replayed or late
# batch), else write history and list together. Same topic and partition (ARGV[1] = "topic:partition"):
# compare offsets. Otherwise (the topic was repartitioned or replaced): fall back to event time.
_WRITE_LUA = """
local p = redis.call('HGET', KEYS[1], 'p')
if p then
  if p == ARGV[1] then
    if tonumber(redis.call('HGET', KEYS[1], 'o')) >= tonumber(ARGV[2]) then return 0 end
  elseif tonumber(redis.call('HGET', KEYS[1], 'ts') or '0') > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'items', ARGV[4], 'p', ARGV[1], 'o', ARGV[2], 'ts', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
return 1
"""


def rec_key(user_id: str) -> str:
    return f"rec:{{{user_id}}}"


def hist_key(user_id: str) -> str:
    return f"hist:{{{user_id}}}"


@dataclass(frozen=True)
class UserState:
    items: tuple[str, ...]  # newest first
    partition: int | None
    offset: int | None
    shown: tuple[str, ...] = ()  # the list the user sees now
    shown_version: str | None = None  # the model version that wrote it
    topic: str | None = None

    def applied(self, topic: str, partition: int, offset: int) -> bool:
        """True when the event at (topic, partition, offset) is already reflected in this state."""
        return self.topic == topic and self.partition == partition and self.offset is not None and offset <= self.offset


EMPTY_STATE = UserState((), None, None)


@dataclass(frozen=True)
class ListWrite:
    user_id: str
    history: tuple[str, ...]
    items: tuple[tuple[str, float], ...]
    model_version: str
    partition: int
    offset: int
    event_ts_ms: int
    topic: str = ""


class Store:
    """Async Redis access for one scorer. Raises StoreError (retriable) on any Redis failure."""

    def __init__(self, client: RedisClient, ttl_s: int) -> None:
        self._r = client
        self._ttl_s = ttl_s
        self._write = client.register_script(_WRITE_LUA)
        self._cluster = is_cluster(client)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int = 7 * 86_400, cluster: bool = False, **options: Any) -> "Store":
        """`cluster`: the URL names a node of a Redis Cluster. `options` go to redis-py (username, password,
        ssl_ca_certs, …): see Settings.redis_client_options."""
        return cls(connect(url, cluster=cluster, **options), ttl_s)

    @property
    def client(self) -> RedisClient:
        """The underlying client, for other Redis users in the same process (the model registry)."""
        return self._r

    async def close(self) -> None:
        await self._r.aclose()

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except REDIS_ERRORS as exc:
            raise StoreError(f"Redis did not answer: {exc}") from exc

    async def load_tables(
        self,
        catalog: dict[str, str],
        neighbours: dict[str, list[str]],
        trending: list[str],
        item_stats: Mapping[str, ItemStats] | None = None,
    ) -> None:
        """Replace the catalog, co-visitation, trending and item-statistics tables (`rankstream load`)."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.delete(CATALOG_KEY, NEIGHBOURS_KEY, ITEM_STATS_KEY)
                if catalog:
                    pipe.hset(CATALOG_KEY, mapping=catalog)
                if neighbours:
                    pipe.hset(NEIGHBOURS_KEY, mapping={k: ",".join(v) for k, v in neighbours.items()})
                if item_stats:
                    pipe.hset(ITEM_STATS_KEY, mapping={k: s.to_json() for k, s in item_stats.items()})
                pipe.set(TRENDING_KEY, ",".join(trending))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"loading tables into Redis failed: {exc}") from exc

    async def read_catalog(self) -> dict[str, str]:
        try:
            return await self._r.hgetall(CATALOG_KEY)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading {CATALOG_KEY} failed: {exc}") from exc

    async def read_item_stats(self) -> dict[str, ItemStats]:
        """Every item's sales statistics (empty when `rankstream load` predates them)."""
        try:
            raw = await self._r.hgetall(ITEM_STATS_KEY)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading {ITEM_STATS_KEY} failed: {exc}") from exc
        return {k: ItemStats.from_json(v) for k, v in raw.items()}

    async def read_trending(self) -> list[str]:
        try:
            raw = await self._r.get(TRENDING_KEY)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading {TRENDING_KEY} failed: {exc}") from exc
        return raw.split(",") if raw else []

    async def read_states(self, users: list[str]) -> dict[str, UserState]:
        """Each user's stored history and fence, in one round trip."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for u in users:
                    pipe.hmget(hist_key(u), "items", "p", "o")
                    pipe.get(rec_key(u))
                replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading user state failed: {exc}") from exc
        states = {}
        for u, (its, p, o), rec in zip(users, replies[::2], replies[1::2], strict=True):
            if p is None:
                states[u] = EMPTY_STATE
                continue
            shown: tuple[str, ...] = ()
            version = None
            if rec:
                doc = json.loads(rec)
                shown = tuple(i["item_id"] for i in doc["items"])
                version = doc["model_version"]
            topic, _, partition = p.rpartition(":")
            states[u] = UserState(tuple(its.split(",")) if its else (), int(partition), int(o), shown, version, topic)
        return states

    async def read_neighbours(self, items: list[str]) -> dict[str, list[str]]:
        """Co-visitation neighbours of `items` (absent items map to nothing)."""
        if not items:
            return {}
        try:
            raw = await self._r.hmget(NEIGHBOURS_KEY, items)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading {NEIGHBOURS_KEY} failed: {exc}") from exc
        return {it: r.split(",") if r else [] for it, r in zip(items, raw, strict=True)}

    async def write_lists(self, writes: list[ListWrite], quality: dict[str, tuple[int, int]] | None = None) -> int:
        """Write every user's history and list, fenced; returns how many were newer and applied.

        `quality` (model version -> (events checked, hits)) is added to the live hit-rate counters in
        the same round trip.
        """
        if not writes and not quality:
            return 0
        now = time.time()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for w in writes:
                    rec = {
                        "v": SCHEMA_VERSION,
                        "user_id": w.user_id,
                        "items": [{"item_id": i, "score": round(s, 5)} for i, s in w.items],
                        "model_version": w.model_version,
                        "topic": w.topic,
                        "partition": w.partition,
                        "offset": w.offset,
                        "event_ts": w.event_ts_ms,
                        "generated_at": round(now, 3),
                    }
                    keys = [hist_key(w.user_id), rec_key(w.user_id)]
                    args = [f"{w.topic}:{w.partition}", w.offset, w.event_ts_ms, ",".join(w.history),
                            json.dumps(rec), self._ttl_s]  # fmt: skip
                    if self._cluster:
                        # redis-py refuses EVALSHA in a cluster pipeline, and a node that never saw the
                        # script would answer NOSCRIPT after part of the batch was applied: send the text.
                        pipe.eval(_WRITE_LUA, len(keys), *keys, *args)
                    else:
                        await self._write(keys=keys, args=args, client=pipe)
                for version, (checked, hits) in (quality or {}).items():
                    pipe.hincrby(QUALITY_KEY, f"{version}:events", checked)
                    pipe.hincrby(QUALITY_KEY, f"{version}:hits", hits)
                results = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"writing {len(writes)} lists failed: {exc}") from exc
        return sum(int(r) for r in results[: len(writes)])

    async def read_quality(self) -> dict[str, dict[str, float]]:
        """Live hit-rate per model version: events checked, hits, and their ratio."""
        raw = await self._r.hgetall(QUALITY_KEY)
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            version, _, kind = field.rpartition(":")
            out.setdefault(version, {"events": 0, "hits": 0})[kind] = int(value)
        for q in out.values():
            q["hit_rate"] = q["hits"] / q["events"] if q["events"] else 0.0
        return out

    async def read_list(self, user_id: str) -> dict | None:
        """A frontend's read, for the CLI and tests."""
        raw = await self._r.get(rec_key(user_id))
        return json.loads(raw) if raw else None

    async def read_history(self, user_id: str) -> list[str]:
        """The user's items as the scorer last saw them, newest first."""
        raw = await self._r.hget(hist_key(user_id), "items")
        return raw.split(",") if raw else []
