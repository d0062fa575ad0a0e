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

    def rewind(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Nothing of the batch is committed: pause every partition and seek back to the batch's start.

        Called while the batch lock is held, so no rebalance comes between the batch and its rewind (a
        rebalance resets positions to the committed offsets, which may lie before the batch: seeking
        forward to its start afterwards would skip the events held back before it). Pausing keeps the
        consumer from buffering new records (and memory bounded) however long Redis or Kafka stays away;
        the group membership stays alive meanwhile, so partitions do not move.
        """
        consumer = self._consumer
        consumer.pause(*consumer.assignment())
        m.PAUSED.set(1)
        for tp, recs in records.items():
            if tp in consumer.assignment():
                consumer.seek(tp, recs[0].offset)

    async def wait(self, records: int, exc: Exception) -> None:
        """Wait out the delay after a `rewind` (doubling up to `MAX_DELAY_S`), then resume what is assigned."""
        delay = self.delay
        self.delay = min(delay * 2, MAX_DELAY_S)
        log.warning("batch of %d records failed, paused, retrying in %.1fs: %s", records, delay, exc)
        try:
            await asyncio.sleep(delay)
        finally:
            # What a rebalance assigned meanwhile starts unpaused; resuming it is harmless.
            self._consumer.resume(*self._consumer.assignment())
            m.PAUSED.set(0)
