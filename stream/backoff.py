"""Backpressure: when Redis or Kafka fails a batch, rewind it and stop fetching while waiting to retry."""

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from rankstream.stream import metrics as m

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


class Backoff:
    """Doubling delays from `FIRST_DELAY_S` to `MAX_DELAY_S`, back to the first after a success."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.delay = FIRST_DELAY_S

    def succeeded(self) -> None:
        self.delay = FIRST_DELAY_S

    async def failed(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], exc: Exception) -> None:
        """Nothing of the batch is committed: rewind it, pause every partition, wait, resume.

        Pausing keeps the consumer from buffering new records (and memory bounded) however long Redis or
        Kafka stays away; the group membership stays alive meanwhile, so partitions do not move.
        """
        delay = self.delay
        self.delay = min(delay * 2, MAX_DELAY_S)
        log.warning(
            "batch of %d records failed, paused, retrying in %.1fs: %s",
            sum(len(r) for r in records.values()),
            delay,
            exc,
        )
        consumer = self._consumer
        assigned = list(consumer.assignment())
        consumer.pause(*assigned)
        m.PAUSED.set(1)
        for tp, recs in records.items():
            if tp in consumer.assignment():
                consumer.seek(tp, recs[0].offset)
        try:
            await asyncio.sleep(delay)
        finally:
            consumer.resume(*[tp for tp in assigned if tp in consumer.assignment()])
            m.PAUSED.set(0)
