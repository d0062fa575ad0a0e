"""The one rate-limited producer: replays, the demo and the benchmarks all send records through `produce`."""

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from rankstream.stream.events import ClickEvent

log = logging.getLogger(__name__)

# Sends in flight before we wait for acknowledgements: bounds memory at any speed.
_WINDOW = 2_000

Record = tuple[bytes, bytes]  # (key, value), sent as is


@dataclass
class Produced:
    """What a `produce` call sent: how many records, and each key's last (partition, offset)."""

    records: int = 0
    last: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    # With produce(..., keep_all=True): every record's (partition, offset, Kafka timestamp in ms).
    all: list[tuple[int, int, int]] | None = None

    def note(self, key: bytes, partition: int, offset: int, timestamp_ms: int = 0) -> None:
        # Same key, same partition: a later offset is a later record.
        if key not in self.last or offset > self.last[key][1]:
            self.last[key] = (partition, offset)
        if self.all is not None:
            self.all.append((partition, offset, timestamp_ms))


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    rate: float | None = None,
    linger_ms: int = 5,
    keep_all: bool = False,
) -> Produced:
    """Send (key, value) records in order at `rate` records/s, or as fast as the broker takes them.

    The pace is kept against the start, so a slow acknowledgement is caught up rather than lost.

    Args:
        linger_ms: how long the producer waits to fill a batch; the benchmarks keep it short because
            it adds to the event -> Redis latency they measure.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    await producer.start()
    produced = Produced(all=[] if keep_all else None)
    pending: list[tuple[bytes, asyncio.Future]] = []
    t0 = time.perf_counter()
    try:
        for key, value in records:
            pending.append((key, await producer.send(topic, value=value, key=key)))
            produced.records += 1
            if len(pending) >= _WINDOW:
                await _acknowledged(pending, produced)
            if rate:
                ahead = produced.records / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await _acknowledged(pending, produced)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - t0
    log.info(
        "sent %d records to %s in %.1fs (%.0f/s)",
        produced.records,
        topic,
        elapsed,
        produced.records / max(elapsed, 1e-9),
    )
    return produced


async def _acknowledged(pending: list[tuple[bytes, asyncio.Future]], produced: Produced) -> None:
    """Wait for every pending send, note where each landed, and empty `pending`."""
    for key, meta in zip((k for k, _ in pending), await asyncio.gather(*(f for _, f in pending)), strict=True):
        produced.note(key, meta.partition, meta.offset, meta.timestamp)
    pending.clear()


def event_records(events: Iterable[ClickEvent]) -> Iterable[Record]:
    """Click events as records keyed by user, so each user's events stay in order on one partition."""
    return ((ev.user_id.encode(), ev.to_bytes()) for ev in events)


async def replay(
    events: Iterable[ClickEvent],
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    extra_raw: Iterable[Record] = (),
) -> int:
    """Send events (already in time order) at `rate` events/s, or as fast as the broker takes them.

    `extra_raw` (key, value) records are sent after the events, as-is: the demo uses it to show how
    malformed input is dead-lettered. Kafka record timestamps are the send time, not the historical
    event time, so topic retention does not delete a replay of old data on arrival.
    """
    produced = await produce(bootstrap, topic, itertools.chain(event_records(events), extra_raw), rate=rate)
    return produced.records
