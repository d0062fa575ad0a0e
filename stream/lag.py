"""Consumer-group lag and topic sizes, read through the admin API (the consumer's metadata cache is
empty until it subscribes, so partitions come from describe_topics)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

_ATTEMPTS = 20


@contextlib.asynccontextmanager
async def _clients(
    bootstrap: str, options: dict[str, object]
) -> AsyncIterator[tuple[AIOKafkaAdminClient, AIOKafkaConsumer]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    await admin.start()
    await consumer.start()
    try:
        yield admin, consumer
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    (described,) = await admin.describe_topics([topic])
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def group_lag(bootstrap: str, topic: str, group_id: str, **kafka_options: object) -> dict[int, int]:
    """Lag per partition of `topic` for `group_id` (a partition never committed counts from its start)."""
    async with _clients(bootstrap, kafka_options) as (admin, consumer):
        tps = await _partitions(admin, topic)
        for attempt in range(_ATTEMPTS):
            try:
                committed = await admin.list_consumer_group_offsets(group_id, partitions=tps)
                break
            except KafkaError as exc:
                # The coordinator is briefly unknown while a fresh broker creates __consumer_offsets.
                if not exc.retriable or attempt == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        lag = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
            lag[tp.partition] = ends[tp] - done
        return lag


async def topic_size(bootstrap: str, topic: str, **kafka_options: object) -> int:
    """Records currently held by `topic` (end minus beginning offsets, summed over partitions)."""
    async with _clients(bootstrap, kafka_options) as (admin, consumer):
        tps = await _partitions(admin, topic)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
