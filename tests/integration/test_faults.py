"""Faults on the real services: crashes, a Redis outage, a broker restart, a lost replica, bad input.

Each test compares the final Redis state with a reference replay of what was produced.
"""

import asyncio
import json
import random
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rankstream.deploy import stack as local_stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.store import Store

from .conftest import ITEMS, wait_for
from .faults import (
    Reference,
    Watch,
    assert_all_reflected,
    assert_running,
    committed_total,
    kill9,
    produce_steadily,
    scorer_env,
    spawn_scorer,
    stop_gracefully,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 40


async def wait_drained(stack, topic: str, *alive: subprocess.Popen, limit_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    """Wait for the group's lag to reach 0; fail at once if a scorer that should be running died."""

    async def drained() -> bool:
        for proc in alive:
            assert_running(proc)
        lag = await group_lag(stack.bootstrap, topic, f"g-{topic}")
        return bool(lag) and sum(lag.values()) == 0

    await wait_for(drained, limit_s=limit_s, every=0.5)


async def _advanced(bootstrap: str, group: str, before: int, proc: subprocess.Popen) -> bool:
    assert_running(proc)
    return await committed_total(bootstrap, group) > before


async def _started(log: Path, proc: subprocess.Popen) -> bool:
    assert_running(proc)
    return "scorer started" in await asyncio.to_thread(log.read_text)


async def finish(stack, topic, env, tmp_path, store, ref) -> None:  # type: ignore[no-untyped-def]
    """A last healthy scorer drains what is left; then everything produced must be reflected."""
    last = spawn_scorer(env, tmp_path / "final.log")
    try:
        # The lag may already be 0 (the last killed replica drained the stream): make sure this replica
        # is really up, so that what is checked below went through a healthy start as well.
        await wait_for(partial(_started, tmp_path / "final.log", last), limit_s=60, every=0.2)
        await wait_drained(stack, topic, last)
    finally:
        assert stop_gracefully(last) == 0, (tmp_path / "final.log").read_text()[-3000:]
    await assert_all_reflected(store, ref)


async def test_kill9_at_random_points_loses_nothing(stack, store: Store, tiny_model, topic, tmp_path) -> None:
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    env = scorer_env(stack, topic, tiny_model)
    ref = Reference()
    watch = Watch(store, USERS)
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop_watch))
    kills_done = asyncio.Event()
    # The stream flows for as long as the kills go on, so every replica dies with work in flight.
    producing = asyncio.create_task(
        produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=100_000, rate=60, until=kills_done)
    )
    rng = random.Random(7)
    group = f"g-{topic}"
    kills = 0
    while kills < 20:
        before = await committed_total(stack.bootstrap, group)
        proc = spawn_scorer(env, tmp_path / f"scorer-{kills}.log")
        # Kill only once this replica has committed something, then at a random later point: most kills
        # land mid-batch (consumed, maybe written, not committed), however slow the machine is today.
        await wait_for(partial(_advanced, stack.bootstrap, group, before, proc), limit_s=60, every=0.1)
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        kill9(proc)
        kills += 1
    kills_done.set()
    await producing
    await finish(stack, topic, env, tmp_path, store, ref)
    stop_watch.set()
    await watcher
    assert kills == 20
    assert watch.polls > 50 and watch.backwards == []


async def test_redis_outage_pauses_and_resumes(stack, store: Store, tiny_model, topic, tmp_path) -> None:
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    # Users held back for a later batch (RANKSTREAM_USER_QUIET_MS) must survive the failed, retried batches.
    env = scorer_env(stack, topic, tiny_model, RANKSTREAM_USER_QUIET_MS="50")
    ref = Reference()
    producing = asyncio.create_task(produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=900, rate=60))
    scorer = spawn_scorer(env, tmp_path / "scorer.log")
    try:
        await asyncio.sleep(4)
        # SHUTDOWN SAVE writes the dataset to disk, so the restarted server has it: an outage, not data loss.
        admin = aioredis.from_url(stack.redis_url)
        await admin.shutdown(save=True)
        await admin.aclose()
        await asyncio.sleep(10)
        assert_running(scorer)  # it must ride out the outage
        await asyncio.to_thread(local_stack.start_redis, stack.state_dir)
        await producing
        await wait_drained(stack, topic, scorer)
    finally:
        assert stop_gracefully(scorer) == 0
    log = (tmp_path / "scorer.log").read_text()
    assert "paused, retrying" in log  # it backed off rather than crashing or skipping
    # The fixture's client still holds connections the restart closed: read through a new one.
    fresh = Store(aioredis.from_url(stack.redis_url, decode_responses=True), ttl_s=3600)
    try:
        await assert_all_reflected(fresh, ref)
    finally:
        await fresh.close()


async def test_broker_restart_reconnects(stack, store: Store, tiny_model, topic, tmp_path) -> None:
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    env = scorer_env(stack, topic, tiny_model)
    ref = Reference()
    first = asyncio.create_task(produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=300, rate=100))
    scorer = spawn_scorer(env, tmp_path / "scorer.log")
    try:
        await first
        await asyncio.sleep(2)
        await asyncio.to_thread(local_stack.restart_kafka, stack.state_dir)
        await produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=300, rate=100, seed=1)
        await wait_drained(stack, topic, scorer)
    finally:
        assert stop_gracefully(scorer) == 0
    await assert_all_reflected(store, ref)


async def test_two_scorers_one_killed(stack, store: Store, tiny_model, topic, tmp_path) -> None:
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 4, f"{topic}.dlq": 1})
    # With users held back for a later batch: a revocation drops them uncommitted, the new owner replays them.
    env = scorer_env(stack, topic, tiny_model, RANKSTREAM_USER_QUIET_MS="50")
    ref = Reference()
    producing = asyncio.create_task(produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=1200, rate=80))
    a = spawn_scorer(env, tmp_path / "a.log")
    b = spawn_scorer(env, tmp_path / "b.log")
    try:
        await asyncio.sleep(6)  # both joined and share the partitions
        kill9(a)
        await producing
        await wait_drained(stack, topic, b)
    finally:
        assert stop_gracefully(b) == 0
    await assert_all_reflected(store, ref)


def bad_kinds(rng: random.Random) -> list[tuple[str, Callable[[], bytes | None]]]:
    """(expected reason, maker of a raw value) for 24 kinds of bad record: every family a producer can get
    wrong, including the values that once escaped the validators (1e999, year 1, NaN, deep nesting)."""
    good = {"user_id": "u1", "item_id": ITEMS[0], "ts": "2011-11-01T10:00:00Z", "event": "click"}

    def with_(**kw: object) -> bytes:
        return json.dumps({**good, **kw}).encode()

    def raw_ts(text: str) -> bytes:
        return with_(ts=0).replace(b'"ts": 0', b'"ts": ' + text.encode())

    def without(key: str) -> bytes:
        return json.dumps({k: v for k, v in good.items() if k != key}).encode()

    kinds = [
        ("invalid_json", lambda: json.dumps(good).encode()[: rng.randrange(1, 40)]),
        ("invalid_user_id", lambda: with_(user_id=rng.randrange(10**6))),
        ("invalid_item_id", lambda: without("item_id")),
        ("invalid_ts", lambda: without("ts")),
        ("too_large", lambda: with_(padding="x" * 20_000)),
        ("invalid_utf8", lambda: b'{"user_id": "\xff\xfe"}'),
        ("unknown_item", lambda: with_(item_id=f"NOPE-{rng.randrange(10**6)}")),
        ("invalid_ts", lambda: with_(ts=-rng.randrange(1, 10**9))),
        ("ts_in_future", lambda: with_(ts="2999-01-01T00:00:00Z")),
        ("not_an_object", lambda: b"[1, 2, 3]"),
        ("empty", lambda: None),
        ("invalid_event", lambda: with_(event="hover")),
        ("invalid_user_id", lambda: with_(user_id="")),
        ("invalid_ts", lambda: raw_ts(rng.choice(["1e999", "-1e999", "1e308"]))),
        ("ts_too_old", lambda: with_(ts=rng.choice(["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]))),
        ("invalid_json", lambda: raw_ts(rng.choice(["NaN", "Infinity", "-Infinity"]))),
        ("invalid_json", lambda: b"[" * rng.randrange(2_000, 8_000)),
        ("invalid_json", lambda: raw_ts("9" * rng.randrange(4_400, 9_000))),
        ("invalid_user_id", lambda: with_(user_id="\ud800x")),
        ("invalid_item_id", lambda: with_(item_id=ITEMS[1] + "\u0000")),
        ("invalid_item_id", lambda: with_(item_id=f"{ITEMS[0]},{ITEMS[1]}")),
        ("invalid_user_id", lambda: with_(user_id="x" * 129)),
        ("invalid_ts", lambda: with_(ts=rng.choice([True, [], {}, "soon"]))),
        ("invalid_event", lambda: with_(event=None)),
    ]
    return kinds


def malformed(rng: random.Random, n: int) -> list[tuple[str, bytes | None]]:
    """(expected reason, raw value) for n bad events, the kinds in turn."""
    kinds = bad_kinds(rng)
    return [(reason, make()) for reason, make in (kinds[i % len(kinds)] for i in range(n))]


# Stored state a stray tool could leave, one kind per poisoned user: each makes that user's events
# dead letters (`bad_state`), never the batch's failure.
POISON = {
    "p0": ("set", "hist:{p0}", "garbage"),
    "p1": ("hset", "hist:{p1}", {"items": "a", "p": "nowhere", "o": "x"}),
    "p2": ("hset", "hist:{p2}", {"items": "a", "p": "t:0", "o": "1", "ts": "1"}),
    "p3": ("lpush", "rec:{p3}", "x"),
    "p4": ("sadd", "hist:{p4}", "x"),
}


async def poison(client: aioredis.Redis) -> None:
    await client.hset("hist:{p2}", mapping={"items": "a", "p": "t:0", "o": "1", "ts": "1"})
    await client.set("rec:{p2}", "{not json")
    for _, (op, key, value) in POISON.items():
        if key != "hist:{p2}":
            await getattr(client, op)(
                key, *([value] if op != "hset" else []), **({"mapping": value} if op == "hset" else {})
            )


async def test_five_thousand_bad_records_and_poisoned_users_all_land_in_the_dlq(
    stack, store: Store, tiny_model, topic, tmp_path
):  # type: ignore[no-untyped-def]
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    await poison(store.client)
    env = scorer_env(stack, topic, tiny_model)
    rng = random.Random(3)
    bad = malformed(rng, 5_000)
    ref = Reference()
    poisoned = 0
    scorer = spawn_scorer(env, tmp_path / "scorer.log")  # running while the stream arrives
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        t0 = datetime(2011, 11, 1, tzinfo=UTC)
        for n, (_, value) in enumerate(bad):
            await producer.send(topic, key=b"bad", value=value)
            if n % 5 == 0:  # good events around the bad ones, some of them from users whose state is poisoned
                user = f"p{n % len(POISON)}" if n % 25 == 0 else f"u{n % USERS}"
                item = ITEMS[n % len(ITEMS)]
                ev = ClickEvent(user_id=user, item_id=item, ts=t0 + timedelta(seconds=n))
                meta = await (await producer.send(topic, key=user.encode(), value=ev.to_bytes()))
                if user in POISON:
                    poisoned += 1
                    continue
                ref.last[user] = (meta.partition, meta.offset)
                ref.items.setdefault(user, []).append(item)
            if n % 500 == 0:
                assert_running(scorer)
        await producer.flush()
        await wait_drained(stack, topic, scorer, limit_s=240)
    finally:
        await producer.stop()
        assert stop_gracefully(scorer) == 0
    await assert_all_reflected(store, ref)

    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list = []
    try:
        async with asyncio.timeout(60):
            while len(got) < len(bad) + poisoned:
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(recs)
    finally:
        await consumer.stop()
    want: dict[str, int] = {"bad_state": poisoned}
    for reason, _ in bad:
        want[reason] = want.get(reason, 0) + 1
    have: dict[str, int] = {}
    for r in got:
        headers = dict(r.headers)
        reason = headers["reason"].decode()
        have[reason] = have.get(reason, 0) + 1
        assert headers["detail"] and headers["source_topic"] == topic.encode()
        if reason == "bad_state":  # the key an operator has to repair is named
            assert headers["detail"].decode().split(": ")[0] in {
                f"{k}:{{p{i}}}" for i in range(5) for k in ("hist", "rec")
            }
    assert have == want
    assert len(bad) >= 5_000 and len(bad_kinds(rng)) >= 20 and poisoned >= 40
