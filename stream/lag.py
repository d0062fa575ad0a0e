"""Consumer-group lag: how far the group's committed offsets trail the end of each partition."""

from aiokafka import AIOKafkaConsumer, TopicPartition


async def group_lag(bootstrap: str, topic: str, group_id: str, **kafka_options: object) -> dict[int, int]:
    """Lag per partition of `topic` for `group_id` (a partition never committed counts from its start)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, **kafka_options
    )
    await consumer.start()
    try:
        await consumer.topics()  # fills the metadata cache
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        lag = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            lag[tp.partition] = ends[tp] - (committed if committed is not None else begins[tp])
        return lag
    finally:
        await consumer.stop()
