"""The live tables in Redis: each share under its own hash tag, written with its offset in one step.

Keys of the share of partition P of topic T (the braces are a Redis Cluster hash tag, so one share is
one slot and its write is one atomic script wherever the cluster puts it):
    rs:lt:{T:P}:meta     hash: offset (the last applied; at seeding: the topic's end - 1), last_ms, trend;
                         owner, taken_ms (the replica that took the share last, and when; informational)
    rs:lt:{T:P}:nb       hash: item -> neighbours;weights (`live.dump_neighbours`: forward-decayed, this share only)
    rs:lt:{T:P}:counts   hash: item -> baskets,first_ms,buyers;day:n,...
    rs:lt:{T:P}:top      hash: item -> its `LiveParams.share_top` heaviest neighbours in this share, what
                         readers merge (the full map stays for the job's restarts)
    rs:lt:{T:P}:users    hash: user -> [open basket ts, items, previous basket ts, items]
    rs:lt:{T:P}:bought   set: user\\x1fitem, whoever bought what (distinct buyers)
and `rs:lt:meta` (hash: topic, partitions, params), written by `load` when it seeds the shares.

Why a fence and absolute values: a replica writes, after each batch, the new values of whatever the
batch changed plus the batch's last offset, only if the stored offset is still the one its state was
read at. A replica that crashed before writing leaves the old values and offset, so the events are
applied again from there, once; a replica that lost its partition to another (a zombie) finds the
offset moved and writes nothing.
"""

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from rankstream.stream.errors import RankstreamError
from rankstream.stream.live import (
    Dirty,
    ItemCounts,
    LiveParams,
    Share,
    UserBaskets,
    dump_neighbours,
    dump_trend,
    parse_neighbours,
    parse_trend,
)
from rankstream.stream.redis_client import RedisClient
from rankstream.stream.store import user_fault

log = logging.getLogger(__name__)

META_KEY = "rs:lt:meta"
# How the values are written (2: neighbour weights as packed doubles). A reader refuses another format
# at start, with the fix, instead of failing on every value.
FORMAT = "2"
_SEED_CHUNK = 2_000  # fields per command when seeding, so no single reply or script is huge

# KEYS: meta, nb, counts, users, top, bought. ARGV: expected offset, new offset, last_ms, trend ('' = keep),
# then four counted runs of field/value pairs (nb, counts, users, top) and a counted run of bought members.
_WRITE_LUA = """
local cur = redis.call('HGET', KEYS[1], 'offset')
if cur ~= ARGV[1] then return cur or 'missing' end
local i = 5
for k = 2, 5 do
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1]); i = i + 2 end
end
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('SADD', KEYS[6], ARGV[i]); i = i + 1 end
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'last_ms', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'trend', ARGV[4]) end
return 'ok'
"""


class FenceMoved(RankstreamError):
    """The stored offset is not the one this share was read at: another replica owns the partition now."""


NB, COUNTS, TOP = 1, 2, 4  # indexes into `share_keys` of the hashes readers merge


def share_keys(topic: str, partition: int) -> tuple[str, str, str, str, str, str]:
    """meta, nb, counts, users, top, bought of one share."""
    tag = f"rs:lt:{{{topic}:{partition}}}"
    return (f"{tag}:meta", f"{tag}:nb", f"{tag}:counts", f"{tag}:users", f"{tag}:top", f"{tag}:bought")


def _runs(share: Share, dirty: Dirty, *, everything: bool) -> tuple[list[tuple[str, str]], ...]:
    nb_items = share.neighbours if everything else dirty.neighbours
    count_items = share.counts if everything else dirty.counts
    users = share.users if everything else dirty.users
    return (
        [(it, dump_neighbours(share.neighbours[it])) for it in sorted(nb_items)],
        [(it, share.counts[it].dump()) for it in sorted(count_items)],
        [(u, json.dumps(share.users[u].dump(), separators=(",", ":"))) for u in sorted(users)],
        [(it, dump_neighbours(dict(share.top(it)))) for it in sorted(nb_items)],
    )


async def write_share(
    client: RedisClient, topic: str, partition: int, share: Share, dirty: Dirty, expected: int
) -> None:
    """Write what `dirty` names and the share's offset, if the stored offset is still `expected`.

    Raises:
        FenceMoved: it is not; nothing was written.
    """
    args: list[Any] = [str(expected), str(share.offset), str(share.last_ms)]
    args.append(dump_trend(share.trend, share.trend_day) if dirty.trend else "")
    for run in _runs(share, dirty, everything=False):
        args.append(len(run))
        for field, value in run:
            args += [field, value]
    args.append(len(dirty.bought))
    args += dirty.bought
    keys = share_keys(topic, partition)
    got = await client.eval(_WRITE_LUA, len(keys), *keys, *args)
    if got != "ok":
        raise FenceMoved(f"share {topic}:{partition}: stored offset {got}, this replica read {expected}")


async def seed(
    client: RedisClient,
    topic: str,
    shares: Sequence[Share],
    params: LiveParams,
    start: Mapping[int, int] | None = None,
) -> None:
    """Replace every share of `topic` with `shares`; the tables job then applies partition p's records from
    offset `start[p]` on (default 0). `load` passes the topic's end offsets: records already in the topic
    (an earlier replay) belong to the past the seed stands for and are not counted again.

    For `load`, with no tables job running. The meta key goes last, so a half-written seed is refused.
    """
    start = start or {}
    await client.delete(META_KEY)
    for p, share in enumerate(shares):
        meta, nb, counts, users, top, bought = share_keys(topic, p)
        await client.delete(meta, nb, counts, users, top, bought)
        for key, run in zip((nb, counts, users, top), _runs(share, Dirty(), everything=True), strict=True):
            for at in range(0, len(run), _SEED_CHUNK):
                await client.hset(key, mapping=dict(run[at : at + _SEED_CHUNK]))
        members = sorted(share.bought)
        for at in range(0, len(members), _SEED_CHUNK):
            await client.sadd(bought, *members[at : at + _SEED_CHUNK])
        trend = dump_trend(share.trend, share.trend_day)
        offset = str(start.get(p, 0) - 1)
        await client.hset(meta, mapping={"offset": offset, "last_ms": str(share.last_ms), "trend": trend})
    await client.hset(
        META_KEY,
        mapping={
            "topic": topic,
            "partitions": str(len(shares)),
            "params": json.dumps(asdict(params)),
            "format": FORMAT,
        },
    )


async def mark_taken(client: RedisClient, topic: str, partition: int, replica: str) -> None:
    """Record which replica took a share and when (outside the fence: nothing reads it to count)."""
    now_ms = int(time.time() * 1000)
    await client.hset(share_keys(topic, partition)[0], mapping={"owner": replica, "taken_ms": str(now_ms)})


async def read_meta(client: RedisClient) -> tuple[str, int, LiveParams]:
    """(topic, partitions, params) of the seeded tables; RankstreamError if `load` never seeded them."""
    meta = await client.hgetall(META_KEY)
    if not meta:
        raise RankstreamError(f"no live tables in Redis ({META_KEY} is missing): run `rankstream load` first")
    if meta.get("format") != FORMAT:
        raise RankstreamError(
            f"the live tables in Redis are in format {meta.get('format', '1')}, this version reads {FORMAT}: "
            "run `rankstream load` again"
        )
    try:
        return meta["topic"], int(meta["partitions"]), LiveParams(**json.loads(meta["params"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise RankstreamError(f"{META_KEY} is unreadable ({exc}): run `rankstream load` again") from exc


async def read_share(client: RedisClient, topic: str, partition: int, params: LiveParams) -> Share:
    """A share as stored, ready to go on from its offset.

    Not a transaction (a cluster pipeline cannot hold one): should another replica write between these
    reads, the offset read first is older than what it wrote, and this replica's first write is refused
    by the fence (`FenceMoved`), so a torn read is never built upon."""
    meta_key, nb, counts, users, _, bought = share_keys(topic, partition)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(meta_key).hgetall(nb).hgetall(counts).hgetall(users).smembers(bought)
        meta, nb_raw, counts_raw, users_raw, bought_raw = await pipe.execute()
    if not meta:
        raise RankstreamError(f"share {topic}:{partition} is not seeded: run `rankstream load` first")
    # Parsing a big share takes a while: off the event loop, so the consumer keeps its heartbeats.
    return await asyncio.to_thread(
        _parse_share, topic, partition, params, meta, nb_raw, counts_raw, users_raw, bought_raw
    )


def _parse_share(  # noqa: PLR0913 - the raw parts of one share, as read
    topic: str,
    partition: int,
    params: LiveParams,
    meta: dict[str, str],
    nb_raw: dict[str, str],
    counts_raw: dict[str, str],
    users_raw: dict[str, str],
    bought_raw: set[str],
) -> Share:
    share = Share(params)
    try:
        share.offset = int(meta["offset"])
        share.last_ms = int(meta.get("last_ms", 0))
        if meta.get("trend"):
            share.trend_day, share.trend = parse_trend(meta["trend"])
        share.neighbours = {it: parse_neighbours(v) for it, v in nb_raw.items()}
        share.counts = {it: ItemCounts.parse(v) for it, v in counts_raw.items()}
        for u, v in users_raw.items():
            ts, items, prev_ts, prev_items = json.loads(v)
            share.users[u] = UserBaskets(int(ts), list(items), prev_ts, list(prev_items))
    except (KeyError, ValueError, TypeError) as exc:
        # Counting on from a share that is not what this job wrote would make every later count wrong.
        raise RankstreamError(
            f"share {topic}:{partition} is unreadable ({exc!r}): run `rankstream load` again"
        ) from exc
    share.bought = set(bought_raw)
    return share


async def read_merged_parts(
    client: RedisClient, topic: str, partitions: int, field_key: int, items: Iterable[str]
) -> list[list[str | None]]:
    """For each share, the raw values of `items` in its hash number `field_key` (`TOP` or `COUNTS`).

    A share key of the wrong type reads as empty (logged): one broken share must not stop the scorer."""
    wanted = list(items)
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hmget(share_keys(topic, p)[field_key], wanted)
        replies = await pipe.execute(raise_on_error=False)
    return [_usable(r, topic, p, [None] * len(wanted)) for p, r in enumerate(replies)]


async def read_trends(client: RedisClient, topic: str, partitions: int) -> list[str | None]:
    async with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hget(share_keys(topic, p)[0], "trend")
        replies = await pipe.execute(raise_on_error=False)
    return [_usable(r, topic, p, None) for p, r in enumerate(replies)]


def _usable(reply: Any, topic: str, partition: int, empty: Any) -> Any:
    if isinstance(reply, Exception):
        if user_fault(reply):
            log.error("share %s:%d is unusable, read as empty (run `rankstream load`): %s", topic, partition, reply)
            return empty
        raise reply
    return reply
