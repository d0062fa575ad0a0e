"""Publish stored interactions to the clicks topic as click events, in time order, keyed by user."""

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from rankstream.stream.events import ClickEvent

log = logging.getLogger(__name__)

# Sends in flight before we wait for acknowledgements: bounds memory at any speed.
_WINDOW = 2_000


async def replay(
    events: Iterable[ClickEvent],
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    extra_raw: Iterable[tuple[bytes, bytes]] = (),
) -> int:
    """Send events (already in time order) at `rate` events/s, or as fast as the broker takes them.

    `extra_raw` (key, value) records are sent after the events, as-is: the demo uses it to show how
    malformed input is dead-lettered. Kafka record timestamps are the send time, not the historical
    event time, so topic retention does not delete a replay of old data on arrival.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    pending = []
    t0 = time.perf_counter()
    try:
        for ev in events:
            pending.append(await producer.send(topic, value=ev.to_bytes(), key=ev.user_id.encode()))
            sent += 1
            if len(pending) >= _WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for key, value in extra_raw:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - t0
    log.info("replayed %d records in %.1fs (%.0f/s)", sent, elapsed, sent / max(elapsed, 1e-9))
    return sent
