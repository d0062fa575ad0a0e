"""Hot swap on the real services: under load, refused artifacts, rollback, replicas converging."""

import asyncio
import json
import shutil
from functools import partial

import pytest

from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.artifact import MANIFEST
from rankstream.stream.errors import ConfigError
from rankstream.stream.follow import ModelFollower
from rankstream.stream.ranker import Ranker
from rankstream.stream.registry import ACTIVE_KEY, Registry
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

from .conftest import scorer_settings, wait_for
from .faults import (
    Reference,
    all_reflected,
    assert_all_reflected,
    produce_steadily,
    scorer_env,
    spawn_scorer,
    stop_gracefully,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = 30
load = partial(Ranker.load, threads=1, batch_size=32)


def settings_for(stack, topic: str) -> Settings:  # type: ignore[no-untyped-def]
    return scorer_settings(stack, topic, batch_max_records=30, batch_linger_ms=20, threads=1)


class RecordingStore(Store):
    """The real store, remembering which model versions each batch's writes carried (a batch writes its
    lists in several chunks; `watch` opens a new record at the start of every batch)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.client, ttl_s=3600)
        self.batch_versions: list[set[str]] = []

    def watch(self, scorer: Scorer) -> None:
        process = scorer.process

        async def recorded(records, **kw):  # type: ignore[no-untyped-def]
            self.batch_versions.append(set())
            return await process(records, **kw)

        scorer.process = recorded  # type: ignore[method-assign]

    async def write_lists(self, writes, quality=None, counters=None):  # type: ignore[no-untyped-def, override]
        self.batch_versions[-1].update(w.model_version for w in writes)
        return await super().write_lists(writes, quality, counters)


async def test_swaps_under_load_lose_nothing_and_never_mix_versions(stack, store, registry, topic) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "test")
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    recording = RecordingStore(store)
    scorer = Scorer(settings_for(stack, topic), load(registry.path(a)), recording)
    recording.watch(scorer)
    follower = ModelFollower(registry, scorer, load, replica="r1", poll_s=0.2)
    await scorer.start()
    running = asyncio.create_task(scorer.run())
    following = asyncio.create_task(follower.run())
    ref = Reference()
    producing = asyncio.create_task(produce_steadily(stack.bootstrap, topic, ref, users=USERS, count=600, rate=120))
    try:
        for version in (b, a, b, a, b):
            await asyncio.sleep(0.8)
            await registry.promote(version)
        await producing
        await wait_for(lambda: all_reflected(store, ref), limit_s=60)
    finally:
        following.cancel()
        scorer.stop()
        await running
        await scorer.close()
    assert follower.swaps >= 3, f"only {follower.swaps} swaps happened"
    assert all(len(vs) <= 1 for vs in recording.batch_versions), "a batch mixed model versions"
    assert sum(len(vs) == 1 for vs in recording.batch_versions) > 10
    assert set(scorer.stats.events_by_version) == {a, b}
    assert sum(scorer.stats.events_by_version.values()) == ref.sent
    await assert_all_reflected(store, ref)


async def test_a_tampered_or_wrong_spec_artifact_is_refused_while_the_old_serves(stack, store, registry, topic) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "test")
    scorer = Scorer(settings_for(stack, topic), load(registry.path(a)), store)
    follower = ModelFollower(registry, scorer, load, replica="r1")
    # Damaged on disk after it was activated (activation itself verifies, so the pointer is set first).
    await registry.activate(b, "test")
    with (registry.path(b) / "model.onnx").open("ab") as f:
        f.write(b"\0garbage")
    assert not await follower.check()
    assert scorer.ranker.version == a
    assert not await follower.check(), "a refused artifact is not reloaded until it changes"

    # Replaced by a whole copy whose input spec names a pair format this scorer does not build.
    shutil.rmtree(registry.path(b))
    shutil.copytree(registry.path(a), registry.root / b)
    manifest = json.loads((registry.root / b / MANIFEST).read_text())
    manifest["version"] = b
    manifest["input_spec"]["pair_format"] = "some-other-format-v9"
    (registry.root / b / MANIFEST).write_text(json.dumps(manifest))
    assert not await follower.check()
    assert scorer.ranker.version == a

    # A pointer to a version that is not there at all.
    await store.client.set(ACTIVE_KEY, "v-missing")
    assert not await follower.check()
    assert scorer.ranker.version == a
    assert (await registry.serving())["r1"]["version"] == a

    # Still scoring: events flow through the old version.
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    await scorer.start()
    running = asyncio.create_task(scorer.run())
    ref = Reference()
    await produce_steadily(stack.bootstrap, topic, ref, users=5, count=20, rate=200)
    try:
        await wait_for(lambda: all_reflected(store, ref), limit_s=30)
    finally:
        scorer.stop()
        await running
        await scorer.close()
    assert set(scorer.stats.events_by_version) == {a}


async def test_rollback_restores_the_previous_version(stack, store, registry, topic) -> None:  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    await registry.promote(b)
    scorer = Scorer(settings_for(stack, topic), load(registry.path(b)), store)
    await scorer.start()  # reads the catalog and item statistics a new version is checked against
    try:
        follower = ModelFollower(registry, scorer, load, replica="r1")
        record = await registry.rollback()
        assert (record.previous, record.version, await registry.active()) == (b, a, a)
        assert await follower.check()
        assert scorer.ranker.version == a
    finally:
        await scorer.close()

    await registry.pin(b)
    with pytest.raises(ConfigError, match="pinned to"):
        await registry.rollback()
    version, activated = await registry.publish(registry.path(a))
    assert (version, activated, await registry.active()) == (a, False, b)
    await registry.unpin()
    assert [r.reason for r in await registry.activations()] == ["pin", "rollback", "promote", "publish"]


async def test_replicas_converge_and_a_late_replica_serves_the_active_version(stack, store, registry, topic, tmp_path):  # type: ignore[no-untyped-def]
    a, b = registry.versions()
    await registry.activate(a, "publish")
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    env = scorer_env(stack, topic, registry.root, RANKSTREAM_MODEL_POLL_S="0.5")
    first = [spawn_scorer(env | {"RANKSTREAM_REPLICA": f"r{i}"}, tmp_path / f"r{i}.log") for i in (1, 2)]
    late = None
    try:
        await wait_for(lambda: _serving(registry, {"r1": a, "r2": a}), limit_s=90)
        await registry.promote(b)
        await wait_for(lambda: _serving(registry, {"r1": b, "r2": b}), limit_s=15)
        late = spawn_scorer(env | {"RANKSTREAM_REPLICA": "r3"}, tmp_path / "r3.log")
        await wait_for(lambda: _serving(registry, {"r1": b, "r2": b, "r3": b}), limit_s=90)
        ref = Reference()
        await produce_steadily(stack.bootstrap, topic, ref, users=10, count=40, rate=100)
        await wait_for(lambda: all_reflected(store, ref), limit_s=60)
        versions = {(await store.read_list(u))["model_version"] for u in ref.last}
        assert versions == {b}
    finally:
        for proc in [*first, late]:
            if proc is not None:
                assert stop_gracefully(proc) == 0
    assert set(await registry.serving()) == set(), "replicas remove themselves from the report on exit"


async def _serving(registry: Registry, want: dict[str, str]) -> bool:
    serving = await registry.serving()
    return all(serving.get(r, {}).get("version") == v for r, v in want.items())
