"""Redis: the catalog the scorer reads, and the per-user lists it writes (the item tables: livestore).

Every key name the scorer uses is defined in this module (`rec_key`, `hist_key`, the `rs:*`
constants); what each key holds is documented once, for frontends and operators, in
docs/operations.md ("Redis keys").
The `{<user>}` braces are literal Redis Cluster hash tags: both keys a write touches live in one slot.
"""

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from rankstream.stream.canary import group_counters
from rankstream.stream.errors import ConfigError, StoreError
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient, connect, connect_from_settings, is_cluster
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CATALOG_KEY = "rs:catalog"
QUALITY_KEY = "rs:quality"
WAIT_CHANNEL = "rs:wait"  # an empty message before each WAIT (`Store._queue_wait`); nobody subscribes

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
class Written:
    """The outcome of `Store.write_lists`."""

    applied: int  # lists newer than the stored ones, written
    bad: dict[str, str]  # users whose stored state refused the write (`user_fault`) -> the key and the error


def user_fault(exc: Exception) -> bool:
    """Whether a Redis reply error belongs to the keys of one command (a key of the wrong type, a value
    the script cannot use), rather than to the server (out of memory, read-only replica, a failover)."""
    msg = str(exc)
    return isinstance(exc, ResponseError) and (msg.startswith("WRONGTYPE") or msg.startswith("user_script:"))


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
    """Async Redis access for one scorer. Raises StoreError (retriable) on any Redis failure.

    With `wait_replicas` > 0, the scorer's reads and writes of user state (`read_states`, `write_lists`)
    succeed only once that many replicas acknowledged everything the primary had taken until then
    (Settings.redis_wait_replicas), so a batch's offsets are committed only for state a failover keeps.
    """

    def __init__(self, client: RedisClient, ttl_s: int, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self._r = client
        self._ttl_s = ttl_s
        self._write = client.register_script(_WRITE_LUA)
        self._cluster = is_cluster(client)
        if wait_replicas and self._cluster:
            raise ConfigError("no replica waits on a Redis Cluster: set RANKSTREAM_REDIS_WAIT_REPLICAS=0")
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int = 7 * 86_400, cluster: bool = False, **options: Any) -> "Store":
        """`cluster`: the URL names a node of a Redis Cluster. `options` go to redis-py (username, password,
        ssl_ca_certs, …): see Settings.redis_client_options."""
        return cls(connect(url, cluster=cluster, **options), ttl_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Store":
        """A Store on the settings' Redis (`connect_from_settings`), lists kept for `rec_ttl_s`, waiting for
        `redis_wait_replicas` replicas."""
        return cls(
            connect_from_settings(settings),
            settings.rec_ttl_s,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

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

    async def load_catalog(self, catalog: dict[str, str]) -> None:
        """Replace the catalog (`rankstream load`); the live tables are seeded by `livestore.seed`."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.delete(CATALOG_KEY)
                if catalog:
                    pipe.hset(CATALOG_KEY, mapping=catalog)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StoreError(f"loading the catalog into Redis failed: {exc}") from exc

    async def read_catalog(self) -> dict[str, str]:
        try:
            return await self._r.hgetall(CATALOG_KEY)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading {CATALOG_KEY} failed: {exc}") from exc

    async def read_states(self, users: list[str]) -> tuple[dict[str, UserState], dict[str, str]]:
        """Each user's stored history and fence, in one round trip; and the users whose stored state is
        unusable (a key of the wrong type, a value that does not parse), each with what is wrong."""
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for u in users:
                    pipe.hmget(hist_key(u), "items", "p", "o")
                    pipe.get(rec_key(u))
                if self._wait_replicas:
                    self._queue_wait(pipe)
                replies = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise StoreError(f"reading user state failed: {exc}") from exc
        if self._wait_replicas:
            # A user whose stored state shows an event as applied is not written again: that state must
            # be one a failover keeps before the batch's offsets are committed.
            replies = await self._check_replicated(replies, f"the state of {len(users)} users")
        states: dict[str, UserState] = {}
        bad: dict[str, str] = {}
        for u, hist, rec in zip(users, replies[::2], replies[1::2], strict=True):
            try:
                states[u] = _user_state(u, hist, rec)
            except BadState as exc:
                bad[u] = str(exc)
        return states, bad

    async def write_lists(
        self,
        writes: list[ListWrite],
        quality: dict[str, tuple[int, int]] | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> "Written":
        """Write every user's history and list, fenced (see Written for what comes back).

        `quality` (model version -> (events checked, hits)) is added to the live hit-rate counters in
        the same round trip, and so is `counters` (`version:field` -> increment: latency histogram,
        errors; stream/canary.py).
        """
        if not writes and not quality and not counters:
            return Written(0, {})
        now = time.time()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for w in writes:
                    keys = [hist_key(w.user_id), rec_key(w.user_id)]
                    args = [
                        f"{w.topic}:{w.partition}",
                        w.offset,
                        w.event_ts_ms,
                        ",".join(w.history),
                        json.dumps(_rec_doc(w, now)),
                        self._ttl_s,
                    ]
                    if self._cluster:
                        # redis-py refuses EVALSHA in a cluster pipeline, and a node that never saw the
                        # script would answer NOSCRIPT after part of the batch was applied: send the text.
                        pipe.eval(_WRITE_LUA, len(keys), *keys, *args)
                    else:
                        await self._write(keys=keys, args=args, client=pipe)
                for version, (checked, hits) in (quality or {}).items():
                    pipe.hincrby(QUALITY_KEY, f"{version}:events", checked)
                    pipe.hincrby(QUALITY_KEY, f"{version}:hits", hits)
                for name, n in (counters or {}).items():
                    pipe.hincrby(QUALITY_KEY, name, n)
                if self._wait_replicas:
                    self._queue_wait(pipe)
                results = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise StoreError(f"writing {len(writes)} lists failed: {exc}") from exc
        if self._wait_replicas:
            results = await self._check_replicated(results, f"{len(writes)} lists")
        applied, bad = 0, {}
        for w, r in zip(writes, results, strict=False):
            if isinstance(r, Exception):
                if not user_fault(r):
                    raise StoreError(f"writing {len(writes)} lists failed: {r}") from r
                bad[w.user_id] = f"{hist_key(w.user_id)} or {rec_key(w.user_id)}: {r}"
            else:
                applied += int(r)
        for r in results[len(writes) :]:
            if isinstance(r, Exception):
                # The live hit-rate is a metric: a broken counter must not stop the lists.
                log.error("updating %s failed; lists are written, the live hit-rate is not: %s", QUALITY_KEY, r)
                break
        return Written(applied, bad)

    def _queue_wait(self, pipe: Any) -> None:
        """End a pipeline with PUBLISH and WAIT: its reply says how many replicas have everything up to here.

        Newer Redis versions have WAIT count acknowledgements of its own connection's last write only
        (7.0: of its last command of any kind), and a replayed batch whose writes the fence refuses
        writes nothing (what it relies on came through another connection: an earlier attempt). PUBLISH
        is a write the primary sends to every replica even with no subscriber, after whatever any client
        wrote before it, so the WAIT behind it on the same connection covers all of that on any version.
        A pipeline keeps its one connection, so a failover between the writes and the WAIT cannot go
        unnoticed.
        """
        pipe.publish(WAIT_CHANNEL, "")
        pipe.wait(self._wait_replicas, self._wait_timeout_ms)

    async def _check_replicated(self, replies: list[Any], what: str) -> list[Any]:
        """`replies` less the two of `_queue_wait`; StoreError (the batch is retried) if too few replicas answered."""
        *replies, published, acked = replies
        if isinstance(published, Exception) or isinstance(acked, Exception) or acked < self._wait_replicas:
            # The connection may lead to a primary that was just demoted, or one a failover left without
            # its replica: close the idle ones, so the retry connects again (through Sentinel, to the
            # primary it names now).
            if isinstance(self._r, Redis):
                await self._r.connection_pool.disconnect(inuse_connections=False)
            got = published if isinstance(published, Exception) else acked
            raise StoreError(
                f"{what} not acknowledged by {self._wait_replicas} replica(s) within {self._wait_timeout_ms} ms "
                f"(WAIT: {got}); the batch is retried. A failover, or a replica down or behind: see INFO "
                "replication on the primary, or lower RANKSTREAM_REDIS_WAIT_REPLICAS"
            )
        return replies

    async def read_quality(self) -> dict[str, dict[str, float]]:
        """Live hit-rate per model version: events checked, hits, and their ratio."""
        out: dict[str, dict[str, float]] = {}
        for version, fields in (await self.read_counters()).items():
            if "events" in fields or "hits" in fields:
                events, hits = fields.get("events", 0), fields.get("hits", 0)
                out[version] = {"events": events, "hits": hits, "hit_rate": hits / events if events else 0.0}
        return out

    async def read_counters(self) -> dict[str, dict[str, int]]:
        """Every per-version counter of the live-quality hash, by version then field."""
        return group_counters(await self._r.hgetall(QUALITY_KEY))

    async def read_list(self, user_id: str) -> dict | None:
        """A frontend's read, for the CLI and tests."""
        raw = await self._r.get(rec_key(user_id))
        return json.loads(raw) if raw else None

    async def read_history(self, user_id: str) -> list[str]:
        """The user's items as the scorer last saw them, newest first."""
        raw = await self._r.hget(hist_key(user_id), "items")
        return raw.split(",") if raw else []


class BadState(Exception):
    """A user's stored state that cannot be used; the message names the key."""


def _user_state(user: str, hist: object, rec: object) -> UserState:
    """Parse one user's stored hash and list (the replies of HMGET hist and GET rec), or raise BadState."""
    if isinstance(hist, Exception):
        raise BadState(f"{hist_key(user)}: {hist}")
    if isinstance(rec, Exception):
        raise BadState(f"{rec_key(user)}: {rec}")
    its, p, o = hist  # type: ignore[misc]
    if p is None:
        return EMPTY_STATE
    try:
        topic, _, partition = p.rpartition(":")
        fence = int(partition), int(o)
    except (TypeError, ValueError) as exc:
        raise BadState(f"{hist_key(user)}: fields p/o do not hold topic:partition and an offset ({exc})") from None
    shown: tuple[str, ...] = ()
    version = None
    if rec:
        try:
            doc = json.loads(rec)  # type: ignore[arg-type]
            shown = tuple(str(i["item_id"]) for i in doc["items"])
            version = str(doc["model_version"])
        except Exception as exc:  # noqa: BLE001 - any shape of garbage is the same fault
            raise BadState(f"{rec_key(user)}: not a rankstream list ({type(exc).__name__}: {exc})"[:300]) from None
    return UserState(tuple(its.split(",")) if its else (), fence[0], fence[1], shown, version, topic)


def _rec_doc(w: ListWrite, now: float) -> dict[str, Any]:
    """The `rec:{user}` document frontends read (schema version SCHEMA_VERSION)."""
    return {
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
