"""`rankstream recompress --from-kafka` on the real Kafka and Redis: the window read from the clicks topic,
the new version published into the registry, activated and announced."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from rankstream.data.prepare import Prepared
from rankstream.deploy.kafka_local import create_topics
from rankstream.jobs.presets import recompress_tiny
from rankstream.jobs.recompress import CompressRun, Paths, recompress_cycle
from rankstream.ops.replay import replay
from rankstream.stream.events import ClickEvent
from rankstream.stream.registry import ANNOUNCE_CHANNEL, Registry
from rankstream.stream.rollouts import read_canary
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store
from tests.model_builders import tiny_compress_run, tiny_prepared

from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_kafka_window_cycle_publishes_activates_and_announces(
    stack, store: Store, topic: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tiny_prepared(tmp_path)
    run = tiny_compress_run(tmp_path / "compress")
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3})
    frame = Prepared.load(data).interactions
    events = [
        ClickEvent(user_id=u, item_id=i, ts=t.to_pydatetime(), event="purchase")
        for u, i, t in zip(frame["user_id"], frame["item_id"], frame["ts"], strict=True)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        # Arrived before the window: left out, as is a record that is not a click event.
        stale = ClickEvent(user_id="u0", item_id="i0", ts=datetime(2024, 2, 10, tzinfo=UTC))
        two_hours_ago = int((datetime.now(UTC) - timedelta(hours=2)).timestamp() * 1000)
        await producer.send_and_wait(topic, stale.to_bytes(), key=b"u0", timestamp_ms=two_hours_ago)
    finally:
        await producer.stop()
    await replay(events, stack.bootstrap, topic, extra_raw=[(b"u1", b"{not json")])

    registry = Registry(tmp_path / "models", store.client)
    first, _ = await registry.publish(CompressRun.load(run).best_artifact)
    pubsub = store.client.pubsub()
    await pubsub.subscribe(ANNOUNCE_CHANNEL)
    settings = Settings(
        kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, topic=topic, dlq_topic=f"{topic}.dlq"
    )
    config = replace(
        recompress_tiny(), from_kafka=True, since=datetime.now(UTC) - timedelta(hours=1), days=None, tolerance=1.0
    )
    paths = Paths(data=data, compress_run=run, registry=tmp_path / "models", work=tmp_path / "work")
    try:
        result = await recompress_cycle(registry, paths, config, settings)
        assert result.published and result.activated
        assert await registry.active() == result.version and result.reference == first
        assert result.window["source"] == f"kafka:{topic}"
        assert result.counts["window_events"] == len(events)
        assert registry.verify(result.version).parent == first

        async def announced() -> str | None:
            # get_message returns None for the subscribe confirmation it skips; poll until the real one.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            return message["data"] if message else None

        assert await wait_for(announced, limit_s=10) == result.version

        # The next cycle goes into a canary instead: the active version stays until the replicas decide.
        into_canary = await recompress_cycle(registry, paths, replace(config, canary_share=0.2), settings)
        assert into_canary.published and into_canary.canary and not into_canary.activated
        assert await registry.active() == result.version
        canary = await read_canary(registry)
        assert canary is not None and (canary.version, canary.share, canary.active) == (
            into_canary.version,
            0.2,
            result.version,
        )
    finally:
        await pubsub.aclose()
