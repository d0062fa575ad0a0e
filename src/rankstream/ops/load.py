"""Glue between prepared data files and the running stream: load tables, create topics, replay, read."""

import asyncio
import logging
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from rankstream.data.live_replay import seeded
from rankstream.data.prepare import Prepared
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.catalog import CATALOG_PARTITIONS, CATALOG_TOPIC_CONFIG, embed_catalog, write_title_vectors
from rankstream.ops.replay import replay
from rankstream.stream.events import ClickEvent
from rankstream.stream.kafka_check import check_kafka
from rankstream.stream.livestore import seed
from rankstream.stream.redis_client import check_redis
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)


async def topic_ends(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset (the offset the next record gets)."""
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await producer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**settings.kafka_client_options())
    await consumer.start()
    try:
        return {tp.partition: off for tp, off in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def load_tables_and_topics(settings: Settings, data_dir: Path, partitions: int = 4) -> str:
    """Create the clicks and DLQ topics, load the catalog, seed the live tables with the history before test."""
    prepared = Prepared.load(data_dir)
    store = Store.from_settings(settings)
    try:
        # Before anything is written: a refused login or an untrusted certificate is one line saying which.
        await check_redis(store.client)
        await check_kafka(settings)
        # Before anything is replaced: a refused encoder leaves what was loaded before as it was.
        title_vectors = await embed_catalog(settings, prepared.catalog)
        topics = {
            settings.topic: partitions,
            settings.dlq_topic: 1,
            settings.catalog_topic: CATALOG_PARTITIONS,
            settings.catalog_dlq_topic: 1,
        }
        await asyncio.to_thread(
            partial(
                create_topics,
                settings.kafka_bootstrap,
                topics,
                topic_configs={settings.catalog_topic: CATALOG_TOPIC_CONFIG},
                **settings.kafka_client_options(),
            )
        )
        ends = await topic_ends(settings, settings.topic)
        if len(ends) != partitions:
            log.warning(
                "topic %s has %d partitions, not %d: seeding that many shares", settings.topic, len(ends), partitions
            )
            partitions = len(ends)
        tables = await asyncio.to_thread(seeded, prepared, partitions)
        await store.load_catalog(prepared.catalog)
        vectors = await write_title_vectors(store.client, title_vectors)
        await seed(store.client, settings.topic, tables.shares, tables.params, ends)
    finally:
        await store.close()
    return (
        f"loaded {len(prepared.catalog)} catalog items with {vectors}; live tables seeded from {tables.applied:,} "
        f"events before the test split into {partitions} shares "
        f"({sum(len(s.neighbours) for s in tables.shares):,} neighbour maps, {len(tables.trending())} trending items); "
        f"topics {settings.topic} ({partitions} partitions), {settings.dlq_topic}, "
        f"{settings.catalog_topic}, {settings.catalog_dlq_topic}"
    )


def split_events(data_dir: Path, split: str, limit: int | None = None) -> list[ClickEvent]:
    """A split's interactions as click events in time order (the first `limit` of them)."""
    frame = Prepared.load(data_dir).frame(split).sort_values("ts", kind="stable")
    if limit is not None:
        frame = frame.head(limit)
    kinds = frame["event"] if "event" in frame else ["click"] * len(frame)
    return [
        ClickEvent(user_id=u, item_id=i, ts=t.to_pydatetime(), event=k)
        for u, i, t, k in zip(frame["user_id"], frame["item_id"], frame["ts"], kinds, strict=True)
    ]


async def replay_split(
    settings: Settings, data_dir: Path, split: str, *, limit: int | None = None, rate: float | None = None
) -> int:
    events = split_events(data_dir, split, limit)
    return await replay(events, settings.kafka_bootstrap, settings.topic, rate=rate)


async def read_recs(settings: Settings, user_id: str) -> dict | None:
    store = Store.from_settings(settings)
    try:
        return await store.read_list(user_id)
    finally:
        await store.close()


def _day(when: datetime) -> str:
    """A boundary as a date when it is a UTC midnight (as prepare's own always are), else in full."""
    return f"{when:%Y-%m-%d}" if when.time() == dt_time(0) else when.isoformat()


def _how(prepared: Prepared) -> str:
    """How the split was set: fixed, or chosen from the data (then in whole days, as the rule counted them)."""
    rule, split, last = prepared.rule, prepared.split, prepared.summary.get("last_ts")
    if rule is None or not last:
        return "fixed boundaries"
    test_days = (date.fromisoformat(last[:10]) + timedelta(days=1) - split.valid_end.date()).days
    valid_days = (split.valid_end - split.train_end).days
    return (
        f"chosen from the data: test = its last {test_days} days, valid = the {valid_days} before; "
        "set it with --test-days/--valid-days or --train-end/--valid-end"
    )


def describe(prepared: Prepared) -> str:
    """What `prepare` produced, for a person: the conversion report, the split's boundaries and sizes."""
    s = prepared.summary
    split = prepared.split
    train_end, valid_end = _day(split.train_end), _day(split.valid_end)
    lines = [str(prepared.report)] if prepared.report else []
    if s.get("first_ts") and s.get("last_ts"):
        lines.append(f"data from {s['first_ts'][:10]} to {s['last_ts'][:10]} ({s.get('rows', 0):,} interactions)")
    width = len(train_end) + len(valid_end) + 4
    lines += [
        f"split ({_how(prepared)}){' (reused)' if prepared.reused else ''}:",
        f"  train  {'before ' + train_end:<{width + 7}} {s.get('train_rows', 0):>10,} rows",
        f"  valid  {train_end + ' to ' + valid_end + ' (excl.)':<{width + 7}} {s.get('valid_rows', 0):>10,} rows",
        f"  test   {'from ' + valid_end:<{width + 7}} {s.get('test_rows', 0):>10,} rows",
        f"{s.get('items_with_neighbours', 0):,} items with co-visitation neighbours (from train)",
    ]
    return "\n".join(lines)
