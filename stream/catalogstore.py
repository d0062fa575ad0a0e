"""The catalog in Redis: titles, each encoder version's title vectors, and a log of what changed.

Keys (docs/operations.md, "Redis keys"):
    rs:catalog                         hash: item id -> title (read by every scorer at start)
    {rs:catalog}:textvec:<version>     hash: item id -> the title's unit vector from encoder <version>,
                                       float32 little-endian bytes
    {rs:catalog}:changes               stream: one entry per change, fields `item` and `op` (put | del;
                                       `reload` after `rankstream load` replaced everything or another
                                       encoder became active), trimmed to about CHANGES_MAXLEN entries
    {rs:catalog}:encoder               hash: `active` -> the version scorers search, `next` -> the version
                                       being filled in by `catalog reembed`, `dim:<version>` -> its width

The braces are a Redis Cluster hash tag equal to the whole name `rs:catalog`, so the four keys live in
the slot of `rs:catalog` itself and one MULTI/EXEC may touch them all on a cluster too.

Why writes are safe to repeat: the catalog job writes a batch as absolute values (HSET the title and
the vector, HDEL a removed item) plus its change entries in one MULTI/EXEC, and commits the Kafka offsets
only after EXEC succeeded (at-least-once). A crash between EXEC and the commit replays the batch; the
job first reads what is stored, finds the same titles and vectors, and writes nothing, so neither the
hashes nor the change log are doubled. A crash before EXEC leaves nothing half written. A follower treats
a change entry as "read this item again", never as a delta, so even a repeated entry is harmless.

Why an encoder swap loses no item: the catalog job writes a batch under WATCH of the encoder key, with the
vectors of every version it read there (`active`, and `next` while one is filled in); if the key changed
meanwhile, the write is refused and the batch embedded again for the versions now named. So once `next`
is set, every write of the job carries that version's vector. `catalog reembed` embeds the snapshot it
read after setting `next`, then the items of every change entry logged since, again and again until a
pass finds none, and only then makes `next` active (ops/encoders.py).
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from redis.client import NEVER_DECODE
from redis.exceptions import WatchError

from rankstream.stream.errors import StoreError
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient
from rankstream.stream.store import CATALOG_KEY

log = logging.getLogger(__name__)

CHANGES_KEY = "{" + CATALOG_KEY + "}:changes"
# replica -> "<newest change entry applied>|<when, unix ms>", written by scorers as they apply changes.
SEEN_KEY = "{" + CATALOG_KEY + "}:seen"
# Approximate (MAXLEN ~): Redis trims whole nodes, cheaply. A follower that falls further behind than
# this reads the whole catalog again (CatalogFollower.refresh).
CHANGES_MAXLEN = 100_000
_CHUNK = 1_000  # fields per command when seeding, so no single command is huge

ENCODER_KEY = "{" + CATALOG_KEY + "}:encoder"
PUT, DEL, RELOAD = "put", "del", "reload"


class Encoder(Protocol):
    """What the catalog needs of a text encoder (stream/encoder.py's TextEncoder)."""

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, titles: Sequence[str]) -> np.ndarray: ...


def textvec_key(version: str) -> str:
    return "{" + CATALOG_KEY + "}:textvec:" + version


def pack(vector: np.ndarray) -> bytes:
    """A vector as stored: float32, little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(raw: bytes, dim: int) -> np.ndarray:
    """A stored vector; ValueError when it does not hold `dim` finite float32s."""
    if len(raw) != 4 * dim:
        raise ValueError(f"{len(raw)} bytes, not {4 * dim} ({dim} float32s)")
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vec).all():
        raise ValueError("not finite")
    return vec


class EncoderChanged(StoreError):
    """The encoder key changed between reading it and writing a batch: embed the batch again."""


@dataclass(frozen=True)
class Encoders:
    """What `ENCODER_KEY` says: the active version, the one being filled in, and each one's width."""

    active: str | None = None
    next: str | None = None
    dims: tuple[tuple[str, int], ...] = ()

    @property
    def versions(self) -> list[str]:
        """The versions a catalog write must carry a vector of: active, then next."""
        return [v for v in (self.active, self.next) if v]

    def dim(self, version: str) -> int | None:
        return dict(self.dims).get(version)


def _encoders(raw: Mapping[str, str]) -> Encoders:
    dims = []
    for field_name, value in raw.items():
        if field_name.startswith("dim:"):
            try:
                dim = int(value)
            except ValueError:
                continue  # an unreadable width: that version cannot be followed, as if absent
            if dim > 0:
                dims.append((field_name[4:], dim))
    return Encoders(raw.get("active") or None, raw.get("next") or None, tuple(sorted(dims)))


async def read_encoders(client: RedisClient) -> Encoders:
    try:
        return _encoders(await client.hgetall(ENCODER_KEY))
    except REDIS_ERRORS as exc:
        raise StoreError(f"reading {ENCODER_KEY} failed: {exc}") from exc


async def claim_encoder(client: RedisClient, version: str, dim: int) -> None:
    """Make `version` active unless some version already is (a catalog job's first batch on a fresh Redis)."""
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(ENCODER_KEY, "active", version)
            pipe.hsetnx(ENCODER_KEY, f"dim:{version}", str(dim))
            await pipe.execute()
    except REDIS_ERRORS as exc:
        raise StoreError(f"writing {ENCODER_KEY} failed: {exc}") from exc


async def begin_encoder(client: RedisClient, version: str, dim: int) -> None:
    """Name `version` the one being filled in: from the next batch on the catalog job embeds for it too."""
    try:
        await client.hset(ENCODER_KEY, mapping={"next": version, f"dim:{version}": str(dim)})
    except REDIS_ERRORS as exc:
        raise StoreError(f"writing {ENCODER_KEY} failed: {exc}") from exc


async def activate_encoder(client: RedisClient, version: str, dim: int) -> None:
    """Make `version` the one scorers search and tell them to read everything again, in one MULTI/EXEC."""
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(ENCODER_KEY, mapping={"active": version, f"dim:{version}": str(dim)})
            pipe.hdel(ENCODER_KEY, "next")
            pipe.xadd(CHANGES_KEY, {"item": "", "op": RELOAD}, maxlen=CHANGES_MAXLEN, approximate=True)
            await pipe.execute()
    except REDIS_ERRORS as exc:
        raise StoreError(f"making encoder {version} active failed: {exc}") from exc


@dataclass(frozen=True)
class Stored:
    """What Redis holds for one item: its title (None: not in the catalog) and whether it has a vector."""

    title: str | None
    has_vector: bool


async def read_stored(client: RedisClient, versions: Sequence[str], items: Sequence[str]) -> dict[str, Stored]:
    """Each item's stored title and whether every one of encoder `versions` has its vector, in one round trip."""
    if not items:
        return {}
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(CATALOG_KEY, list(items))
            # Vectors are bytes, not text: a decoding client must not try to read them as UTF-8.
            for version in versions:
                pipe.execute_command("HMGET", textvec_key(version), *items, **{NEVER_DECODE: True})
            titles, *vectors = await pipe.execute()
    except REDIS_ERRORS as exc:
        raise StoreError(f"reading {len(items)} catalog items failed: {exc}") from exc
    return {
        it: Stored(title, all(v[k] is not None for v in vectors))
        for k, (it, title) in enumerate(zip(items, titles, strict=True))
    }


async def write_changes(
    client: RedisClient,
    encoders: Encoders,
    puts: Mapping[str, tuple[str, Mapping[str, bytes]]],
    removals: Iterable[str],
) -> None:
    """Write titles and vectors (`puts`: item -> (title, version -> packed vector)), remove `removals`,
    and log each change, in one MULTI/EXEC, if `ENCODER_KEY` still says `encoders`.

    Raises:
        EncoderChanged: the encoder key says something else now; nothing was written.
        StoreError: any other failure (the batch is retried).
    """
    removals = list(removals)
    if not puts and not removals:
        return
    try:
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(ENCODER_KEY)
            now = _encoders(await pipe.hgetall(ENCODER_KEY))
            if now.versions != encoders.versions:
                raise EncoderChanged(f"the encoders changed from {encoders.versions} to {now.versions}")
            pipe.multi()
            if puts:
                pipe.hset(CATALOG_KEY, mapping={it: title for it, (title, _) in puts.items()})
            for version in encoders.versions:
                vectors = {it: vecs[version] for it, (_, vecs) in puts.items() if version in vecs}
                if vectors:
                    pipe.hset(textvec_key(version), mapping=vectors)
            if removals:
                pipe.hdel(CATALOG_KEY, *removals)
                for version in encoders.versions:
                    pipe.hdel(textvec_key(version), *removals)
            for it in puts:
                pipe.xadd(CHANGES_KEY, {"item": it, "op": PUT}, maxlen=CHANGES_MAXLEN, approximate=True)
            for it in removals:
                pipe.xadd(CHANGES_KEY, {"item": it, "op": DEL}, maxlen=CHANGES_MAXLEN, approximate=True)
            await pipe.execute()
    except WatchError as exc:
        raise EncoderChanged("the encoders changed while the batch was written") from exc
    except REDIS_ERRORS as exc:
        raise StoreError(f"writing {len(puts)} catalog items and {len(removals)} removals failed: {exc}") from exc


async def seed_vectors(client: RedisClient, version: str, dim: int, vectors: Mapping[str, bytes]) -> None:
    """Replace encoder `version`'s vectors with `vectors`, make it the active one (any half-filled `next`
    forgotten) and log a `reload`, so followers read everything again (`rankstream load`, after it replaced
    the catalog)."""
    vec_key = textvec_key(version)
    items = list(vectors)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(vec_key)
            for start in range(0, len(items), _CHUNK):
                pipe.hset(vec_key, mapping={it: vectors[it] for it in items[start : start + _CHUNK]})
            pipe.hset(ENCODER_KEY, mapping={"active": version, f"dim:{version}": str(dim)})
            pipe.hdel(ENCODER_KEY, "next")
            await pipe.execute()
    except REDIS_ERRORS as exc:
        raise StoreError(f"seeding {len(items)} title vectors of encoder {version} failed: {exc}") from exc
    await log_reload(client)


async def log_reload(client: RedisClient) -> None:
    """Tell followers that the catalog was replaced as a whole."""
    try:
        await client.xadd(CHANGES_KEY, {"item": "", "op": RELOAD}, maxlen=CHANGES_MAXLEN, approximate=True)
    except REDIS_ERRORS as exc:
        raise StoreError(f"logging the catalog reload in {CHANGES_KEY} failed: {exc}") from exc


@dataclass(frozen=True)
class Snapshot:
    """The whole catalog with one version's vectors, and the last change it includes."""

    last_id: str
    titles: dict[str, str]
    vectors: dict[str, bytes]
    version: str = ""
    dim: int = 0


async def read_snapshot(client: RedisClient, version: str, dim: int = 0, *, follow: bool = False) -> Snapshot:
    """Titles and vectors of `version` (with `follow`, of the active version if `ENCODER_KEY` names one with
    its width), with the id of the newest change entry read before them: changes after that id may be in
    the snapshot already, and reading them again is harmless."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            # In this order on one connection: a change logged after the id is read is replayed, never lost,
            # and an activation after it (its pointer and `reload` are one MULTI) is read as a `reload`.
            pipe.xrevrange(CHANGES_KEY, count=1)
            pipe.hgetall(ENCODER_KEY)
            newest, raw_encoders = await pipe.execute()
        encoders = _encoders(raw_encoders)
        active_dim = encoders.dim(encoders.active) if encoders.active else None
        if follow and encoders.active and active_dim:
            version, dim = encoders.active, active_dim
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(CATALOG_KEY)
            pipe.execute_command("HGETALL", textvec_key(version), **{NEVER_DECODE: True})
            titles, raw = await pipe.execute()
    except REDIS_ERRORS as exc:
        raise StoreError(f"reading the catalog failed: {exc}") from exc
    return Snapshot(newest[0][0] if newest else "0-0", titles, _decode_fields(raw), version, dim)


def _decode_fields(raw: Any) -> dict[str, bytes]:
    """An undecoded HGETALL reply (a dict, or a flat list on some protocol versions) with text fields."""
    if isinstance(raw, dict):
        pairs = raw.items()
    else:
        pairs = zip(raw[::2], raw[1::2], strict=True)
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in pairs}


@dataclass(frozen=True)
class Changes:
    """Change entries after some id, what Redis now holds for the items they name, and whether entries
    after that id were trimmed away unread (then the follower must read everything again)."""

    entries: list[tuple[str, str, str]]  # (id, item, op), oldest first
    titles: dict[str, str | None]
    vectors: dict[str, bytes | None]
    gap: bool


async def read_changes(client: RedisClient, version: str, after: str, count: int) -> Changes:
    """Up to `count` change entries after id `after` (non-blocking) and the current values of their items."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.xrange(CHANGES_KEY, min=f"({after}", count=count)
            pipe.xinfo_stream(CHANGES_KEY)
            raw, info = await pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise raw
        entries = [(eid, f.get("item", ""), f.get("op", "")) for eid, f in raw]
        items = sorted({it for _, it, op in entries if op in (PUT, DEL) and it})
        titles: dict[str, str | None] = {}
        vectors: dict[str, bytes | None] = {}
        if items:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hmget(CATALOG_KEY, items)
                pipe.execute_command("HMGET", textvec_key(version), *items, **{NEVER_DECODE: True})
                got_titles, got_vectors = await pipe.execute()
            titles = dict(zip(items, got_titles, strict=True))
            vectors = dict(zip(items, got_vectors, strict=True))
    except REDIS_ERRORS as exc:
        raise StoreError(f"reading {CHANGES_KEY} failed: {exc}") from exc
    return Changes(entries, titles, vectors, _trimmed_after(info, after))


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _trimmed_after(info: Any, after: str) -> bool:
    """Whether the log lost entries newer than `after` to trimming (or was deleted after we read it)."""
    if isinstance(info, Exception):
        # No such key: the log was never written, or someone deleted it after we read from it.
        return after != "0-0"
    deleted = info.get("max-deleted-entry-id") or "0-0"
    return stream_id(str(deleted)) > stream_id(after)


async def mark_seen(client: RedisClient, replica: str, last_id: str, applied_ms: int) -> None:
    """Report how far a replica's copy of the catalog is (operators; `bench catalog` times new items by it)."""
    try:
        await client.hset(SEEN_KEY, replica, f"{last_id}|{applied_ms}")
    except REDIS_ERRORS as exc:
        raise StoreError(f"writing {SEEN_KEY} failed: {exc}") from exc


async def newest_change(client: RedisClient) -> str:
    """The id of the newest change entry ("0-0" while the log is empty)."""
    newest = await client.xrevrange(CHANGES_KEY, count=1)
    return newest[0][0] if newest else "0-0"


async def change_entry_of(client: RedisClient, item: str, after: str) -> tuple[int, int] | None:
    """The id of the change entry logging `item` after entry `after`, None while there is none."""
    for eid, fields in await client.xrange(CHANGES_KEY, min=f"({after}"):
        if fields.get("item") == item:
            return stream_id(eid)
    return None


async def seen_by(client: RedisClient, replicas: Iterable[str]) -> dict[str, tuple[tuple[int, int], float]] | None:
    """Each replica's newest applied change entry and when (unix ms); None until every one has reported."""
    raw = await client.hgetall(SEEN_KEY)
    out = {}
    for name in replicas:
        if name not in raw:
            return None
        last, _, at = raw[name].partition("|")
        out[name] = (stream_id(last), float(at))
    return out
