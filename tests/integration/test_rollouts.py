"""Canary and shadow on the real services: who gets which version, the decision, what is never written."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest

from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.canary import in_share
from rankstream.stream.errors import ConfigError
from rankstream.stream.follow import ModelFollower
from rankstream.stream.ranker import Ranker
from rankstream.stream.registry import Registry
from rankstream.stream.rollouts import CANARY_KEY, end_canary, read_canary, start_canary, start_shadow, stop_shadow
from rankstream.stream.scorer import Scorer
from rankstream.stream.store import QUALITY_KEY, Store

from .conftest import scorer_settings, wait_for
from .faults import Reference, all_reflected, assert_all_reflected, produce_steadily

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 40
load = partial(Ranker.load, threads=1, batch_size=32)


@asynccontextmanager
async def running(stack, store: Store, registry: Registry, topic: str, **settings: object) -> AsyncIterator[Scorer]:  # type: ignore[no-untyped-def]
    """A scorer on the active version with its follower checking every 0.2 s."""
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    options = {"batch_max_records": 30, "batch_linger_ms": 20, "threads": 1} | settings
    scorer = Scorer(scorer_settings(stack, topic, **options), load(registry.path(await registry.active())), store)
    follower = ModelFollower(registry, scorer, load, replica="r1", poll_s=0.2)
    await scorer.start()
    scoring = asyncio.create_task(scorer.run())
    following = asyncio.create_task(follower.run())
    try:
        yield scorer
    finally:
        follower.stop()
        following.cancel()
        scorer.stop()
        await scoring
        await asyncio.gather(following, return_exceptions=True)
        await scorer.close()


async def test_a_canary_serves_its_share_of_users_and_every_list_names_its_version(
    stack, store, registry, topic
) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    # Never judged in this test: the decision is the next test's.
    async with running(stack, store, registry, topic, canary_min_events=10**8) as scorer:
        await start_canary(registry, b, 0.5)
        await wait_for(lambda: _has_canary(scorer, b), limit_s=30)
        ref = Reference()
        await produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=400, rate=200)
        await wait_for(lambda: all_reflected(store, ref), limit_s=60)
    await assert_all_reflected(store, ref)
    versions = {u: (await store.read_list(u))["model_version"] for u in ref.last}
    for user, version in versions.items():
        assert version == (b if in_share(user, 0.5, b) else a), user
    assert set(versions.values()) == {a, b}
    assert set(scorer.stats.events_by_version) == {a, b}
    assert sum(scorer.stats.events_by_version.values()) == ref.sent
    counters = await store.read_counters()
    for version in (a, b):
        assert counters[version]["served"] > 0
        assert sum(n for k, n in counters[version].items() if k.startswith("lat")) == counters[version]["served"]
        assert counters[version]["events"] > 0  # events checked against this version's lists


async def _has_canary(scorer: Scorer, version: str) -> bool:
    return scorer.canary is not None and scorer.canary.ranker.version == version


async def test_a_worse_canary_is_rolled_back_and_an_equal_one_promoted_with_the_figures_logged(
    stack, store, registry, topic
) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    async with running(stack, store, registry, topic, canary_min_events=200) as scorer:
        await start_canary(registry, b, 0.3)
        with pytest.raises(ConfigError, match="is running"):
            await start_canary(registry, b, 0.3)
        await wait_for(lambda: _has_canary(scorer, b), limit_s=30)
        # The live figures the scorers add up, as if both arms had served: the canary far worse.
        await store.client.hset(QUALITY_KEY, mapping={f"{a}:events": 400, f"{a}:hits": 40, f"{b}:events": 300})
        await wait_for(lambda: _no_canary(registry), limit_s=30)
        assert await registry.active() == a
        await wait_for(lambda: _canary_gone(scorer), limit_s=30)

        await start_canary(registry, b, 0.3)
        await wait_for(lambda: _has_canary(scorer, b), limit_s=30)
        await store.client.hincrby(QUALITY_KEY, f"{a}:events", 300)
        await store.client.hincrby(QUALITY_KEY, f"{a}:hits", 30)
        await store.client.hincrby(QUALITY_KEY, f"{b}:events", 300)
        await store.client.hincrby(QUALITY_KEY, f"{b}:hits", 31)
        canary_ranker = scorer.canary.ranker  # type: ignore[union-attr]
        await wait_for(lambda: _no_canary(registry), limit_s=30)
        assert await registry.active() == b
        await wait_for(lambda: _serves(scorer, b), limit_s=30)
        assert scorer.ranker is canary_ranker, "a promoted canary is served as loaded, not loaded again"
        await wait_for(lambda: _canary_gone(scorer), limit_s=30)
    log = await registry.activations()
    assert [r.reason for r in log[:4]] == ["canary-promote", "canary", "canary-rollback", "canary"]
    rolled_back = log[2].detail
    assert rolled_back is not None and rolled_back["canary"]["events"] == 300 and rolled_back["canary"]["hits"] == 0
    assert rolled_back["active"]["events"] == 400 and rolled_back["z"] < -3
    promoted = log[0].detail
    assert promoted is not None and promoted["canary"]["events"] == 300 and promoted["active"]["events"] == 300


async def _no_canary(registry: Registry) -> bool:
    return await read_canary(registry) is None


async def _canary_gone(scorer: Scorer) -> bool:
    return scorer.canary is None


async def _serves(scorer: Scorer, version: str) -> bool:
    return scorer.ranker.version == version


async def test_an_operator_ends_a_canary_or_clears_an_unreadable_one(store, registry) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    with pytest.raises(ConfigError, match="strictly between"):
        await start_canary(registry, b, 1.0)
    await start_canary(registry, b, 0.2)
    assert (await end_canary(registry)).version == b
    assert await read_canary(registry) is None and await registry.active() == a
    await store.client.set(CANARY_KEY, "{not json")
    with pytest.raises(ConfigError, match="models canary --end"):
        await end_canary(registry)
    assert await read_canary(registry) is None


async def test_a_shadow_scores_a_sample_without_writing_its_lists(stack, store, registry, topic) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    async with running(stack, store, registry, topic, shadow_max_share=1.0) as scorer:
        await start_shadow(registry, b, 1.0)
        await wait_for(lambda: _has_shadow(scorer, b), limit_s=30)
        ref = Reference()
        await produce_steadily(stack.bootstrap, topic, ref, users=10, count=300, rate=60)
        await wait_for(lambda: all_reflected(store, ref), limit_s=60)
        shadow = scorer.shadow
        assert shadow is not None and shadow.scored_users > 0
        await stop_shadow(registry)
        await wait_for(lambda: _no_shadow(scorer), limit_s=30)
    await assert_all_reflected(store, ref)
    assert {(await store.read_list(u))["model_version"] for u in ref.last} == {a}
    counters = (await store.read_counters())[b]
    assert counters["shadow_events"] > 0
    assert 0 <= counters["shadow_hits"] <= counters["shadow_events"]
    assert 0 <= counters["shadow_served_hits"] <= counters["shadow_events"]
    assert "served" not in counters, "a shadow version writes no list"


async def _has_shadow(scorer: Scorer, version: str) -> bool:
    return scorer.shadow is not None and scorer.shadow.version == version


async def _no_shadow(scorer: Scorer) -> bool:
    return scorer.shadow is None
