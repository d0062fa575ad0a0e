"""What a chaos run sends to the real services and reads back from them: the load, the lists as they
are written, each user's final state, and the dead-letter topic."""

import asyncio
import contextlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from rankstream.bench.chaos_figures import DeadLetter, Stored
from rankstream.bench.lists import ListWatch
from rankstream.ops.replay import Produced, Record, event_records, produce
from rankstream.stream.events import ClickEvent
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient
from rankstream.stream.store import hist_key, rec_key

_CHUNK = 500
_LINGER_MS = 2  # a short linger: it adds to the event -> Redis latency being measured


async def produce_logged(bootstrap: str, topic: str, events: list[ClickEvent], rate: float, log_path: Path) -> Produced:
    """Send the events at `rate` from a process of its own (a producer in the bench's interpreter would
    take its CPU), keeping every record's place. Its log goes to `log_path`: while the broker is down the
    Kafka client logs each failed connection, thousands a second."""
    records = list(event_records(events))
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, _produce, bootstrap, topic, records, rate, log_path)


def _produce(bootstrap: str, topic: str, records: list[Record], rate: float, log_path: Path) -> Produced:
    logging.basicConfig(filename=log_path, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(produce(bootstrap, topic, records, rate=rate, linger_ms=_LINGER_MS, keep_all=True))


async def send_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> list[tuple[int, int]]:
    """Send (key, value) records as they are, all at once; where each landed, (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(topic, key=key, value=value) for key, value in records]
        metas = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def watch_lists(watch: ListWatch, stop: asyncio.Event) -> None:
    """`ListWatch.run`, riding out the Redis faults: a poll that fails is skipped, the next one catches up
    (each sample is timed by the writer, not by the poll)."""
    while not stop.is_set():
        with contextlib.suppress(*REDIS_ERRORS):
            await watch.poll()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), watch.poll_s)
    with contextlib.suppress(*REDIS_ERRORS):
        await watch.poll()


async def read_stored(client: RedisClient, users: list[str], topic: str) -> dict[str, Stored]:
    """Each user's final list position and history, for the users whose list reflects `topic`."""
    out: dict[str, Stored] = {}
    for i in range(0, len(users), _CHUNK):
        chunk = users[i : i + _CHUNK]
        async with client.pipeline(transaction=False) as pipe:
            for u in chunk:
                pipe.get(rec_key(u))
                pipe.hget(hist_key(u), "items")
            replies = await pipe.execute()
        for u, doc, items in zip(chunk, replies[::2], replies[1::2], strict=True):
            rec = json.loads(doc) if doc else None
            if rec is not None and rec.get("topic", topic) == topic:
                out[u] = Stored(rec["partition"], rec["offset"], tuple(items.split(",") if items else ()))
    return out


async def read_dlq(bootstrap: str, topic: str) -> list[DeadLetter]:
    """Every letter of the (one-partition) DLQ topic, from its beginning to its end now."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    letters = []
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                h = {k: v.decode() for k, v in r.headers}
                at = (int(h["source_partition"]), int(h["source_offset"]))
                letters.append(DeadLetter(h["source_topic"], *at, h["reason"]))
    finally:
        await consumer.stop()
    return letters
