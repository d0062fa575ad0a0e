"""Builders for scorer tests on the real services: events, a producer, a scorer run until drained."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings

from .conftest import ITEMS, scorer_settings, wait_for

T0 = datetime(2011, 11, 1, 9, 0, tzinfo=UTC)


def events_for(users: int, per_user: int) -> list[ClickEvent]:
    """Interleaved events: user u clicks items u, u+1, ... in time order."""
    out = []
    for k in range(per_user):
        for u in range(users):
            out.append(
                ClickEvent(
                    user_id=f"u{u}",
                    item_id=ITEMS[(u * 3 + k) % len(ITEMS)],
                    ts=T0 + timedelta(minutes=k),
                    event="click",
                )
            )
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def settings_for(stack, topic: str, model_dir, batch_max_records: int = 50) -> Settings:  # type: ignore[no-untyped-def]
    return scorer_settings(stack, topic, model_dir=model_dir, batch_max_records=batch_max_records, batch_linger_ms=50)


@contextlib.asynccontextmanager
async def serving(scorer: Scorer) -> AsyncIterator["asyncio.Task[object]"]:
    """Start the scorer and run it while the block runs; then stop it gracefully and close it."""
    await scorer.start()
    task = asyncio.create_task(scorer.run())
    try:
        yield task
    finally:
        scorer.stop()
        await task
        await scorer.close()


async def run_until_drained(scorer: Scorer, s: Settings) -> None:
    """Run the scorer until its group's lag is 0, then stop it gracefully."""
    async with serving(scorer) as task:

        async def drained() -> bool:
            if task.done():
                task.result()  # surface a crash instead of timing out
            lag = await group_lag(s.kafka_bootstrap, s.topic, s.group_id)
            return bool(lag) and sum(lag.values()) == 0

        await wait_for(drained, limit_s=120, every=0.5)


async def setup_topics(stack, topic: str) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 3, f"{topic}.dlq": 1})
