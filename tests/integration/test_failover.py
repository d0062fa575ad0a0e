"""Redis failover without loss: a primary, its replica and three Sentinels, real processes; the scorer
waits for the replica (RANKSTREAM_REDIS_WAIT_REPLICAS) before it commits a batch."""

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

import pytest
import redis.asyncio as aioredis

from rankstream.deploy import redis_local
from rankstream.deploy.kafka_local import create_topics
from rankstream.deploy.redis_local import LocalReplicated, fail_over
from rankstream.stream.errors import StoreError
from rankstream.stream.lag import group_lag
from rankstream.stream.store import ListWrite, Store
from tests.live_seed import seed_lists

from .conftest import CATALOG, ITEM_STATS, NEIGHBOURS, TRENDING, wait_for
from .faults import (
    Reference,
    assert_all_reflected,
    assert_running,
    committed_total,
    produce_steadily,
    scorer_env,
    spawn_scorer,
    stop_gracefully,
)
from .replicated import ReplicatedWatch, replicated_env, replicated_settings

pytestmark = [pytest.mark.integration]

USERS = 40
FAILOVERS = 10


@pytest.fixture
async def rstore(replicated_redis: LocalReplicated) -> AsyncIterator[Store]:
    """A Store through the Sentinels that waits for the replica, on a flushed primary with the test tables."""
    await asyncio.to_thread(redis_local.wait_whole, replicated_redis, 60)
    store = Store.from_settings(replicated_settings(replicated_redis))
    await store.client.flushdb()
    await seed_lists(store, CATALOG, NEIGHBOURS, TRENDING, ITEM_STATS)
    yield store
    await store.close()


async def test_state_the_replica_has_not_acknowledged_fails_the_batch(
    replicated_redis: LocalReplicated, rstore: Store
) -> None:
    r = replicated_redis
    primary = await asyncio.to_thread(redis_local.wait_whole, r, 60)
    (replica,) = set(r.nodes) - {primary}
    first = ListWrite("u1", ("I001",), (("I002", 1.0),), "v1", 0, 5, 1_000, "clicks")
    later = replace(first, offset=6)
    assert (await rstore.write_lists([first])).applied == 1  # acknowledged: returns
    plain = Store(aioredis.from_url(redis_local.url(primary), decode_responses=True), ttl_s=60)
    r.nodes[replica].send_signal(signal.SIGSTOP)  # a replica that stops acknowledging
    try:
        # Written on the primary only, through another connection (an earlier attempt of the batch).
        assert (await plain.write_lists([later])).applied == 1
        # A replayed batch: the state it reads shows the event applied, so it would write nothing.
        with pytest.raises(StoreError, match=r"not acknowledged by 1 replica\(s\) within 300 ms"):
            await rstore.read_states(["u1"])
        # The fence refuses the same write again: nothing written, and still not acknowledged.
        with pytest.raises(StoreError, match="not acknowledged"):
            await rstore.write_lists([later])
    finally:
        r.nodes[replica].send_signal(signal.SIGCONT)
        await plain.close()
    states, bad = await rstore.read_states(["u1"])
    assert states["u1"].offset == 6 and bad == {}
    assert (await rstore.write_lists([later])).applied == 0


async def _committing(bootstrap: str, group: str, before: int, proc: subprocess.Popen) -> bool:
    assert_running(proc)
    return await committed_total(bootstrap, group) > before


async def _drained(bootstrap: str, topic: str, proc: subprocess.Popen) -> bool:
    assert_running(proc)
    lag = await group_lag(bootstrap, topic, f"g-{topic}")
    return bool(lag) and sum(lag.values()) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_failovers_under_load_lose_nothing(
    stack, replicated_redis: LocalReplicated, rstore: Store, tiny_model, topic, tmp_path
) -> None:
    r = replicated_redis
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
    # RANKSTREAM_REDIS_URL (the session stack's server) is not used once Sentinels are set: a scorer that
    # wrote there would leave the lists checked below empty.
    env = scorer_env(stack, topic, tiny_model, **replicated_env(r))
    ref = Reference()
    watch = ReplicatedWatch(rstore, USERS)
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop_watch))
    failovers_done = asyncio.Event()
    producing = asyncio.create_task(
        produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=100_000, rate=40, until=failovers_done)
    )
    log = tmp_path / "scorer.log"
    scorer = spawn_scorer(env, log)
    group = f"g-{topic}"
    rng = random.Random(16)
    done: list[tuple[str, int, int, float]] = []
    t0 = time.monotonic()
    try:
        for n in range(FAILOVERS):
            before = await committed_total(stack.bootstrap, group)
            # Fail over only while the scorer is committing, so each failover lands among writes in flight.
            await wait_for(partial(_committing, stack.bootstrap, group, before, scorer), limit_s=120, every=0.1)
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            how = "kill" if n % 2 else "sentinel"
            started = time.monotonic()
            old, new = await asyncio.to_thread(fail_over, r, how)
            done.append((how, old, new, time.monotonic() - started))
        failovers_done.set()
        await producing
        await wait_for(partial(_drained, stack.bootstrap, topic, scorer), limit_s=180, every=0.5)
    finally:
        failovers_done.set()
        stop_watch.set()
        code = stop_gracefully(scorer)
        await watcher
    assert code == 0, log.read_text()[-3000:]
    await assert_all_reflected(rstore, ref)  # lost 0
    assert len(done) == FAILOVERS and {how for how, *_ in done} == {"sentinel", "kill"}
    assert watch.polls > 50 and watch.backwards == [], watch.backwards[:5]
    # The failovers reached the write path: batches failed for want of an acknowledgement and were retried.
    assert "not acknowledged" in log.read_text()
    print(  # the run's figures (pytest -s)
        f"failover test: {len(done)} failovers in {time.monotonic() - t0:.0f}s, {ref.sent} events, "
        f"{len(ref.last)} users, {watch.polls} replicated polls ({watch.unacknowledged} unacknowledged); "
        + ", ".join(f"{how} {old}->{new} {s:.1f}s" for how, old, new, s in done)
    )
