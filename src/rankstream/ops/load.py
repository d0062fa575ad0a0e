"""Glue between prepared data files and the running stream: load tables, create topics, replay, read."""

import asyncio
from pathlib import Path

from rankstream.data.prepare import Prepared
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.replay import replay
from rankstream.stream.events import ClickEvent
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store


async def load_tables_and_topics(settings: Settings, data_dir: Path, partitions: int = 4) -> str:
    """Create the clicks and DLQ topics and load catalog, co-visitation and trending into Redis."""
    prepared = Prepared.load(data_dir)
    await asyncio.to_thread(
        create_topics, settings.kafka_bootstrap, {settings.topic: partitions, settings.dlq_topic: 1}
    )
    store = Store.from_settings(settings)
    try:
        await store.load_tables(prepared.catalog, prepared.neighbours, prepared.trending, prepared.item_stats)
    finally:
        await store.close()
    return (
        f"loaded {len(prepared.catalog)} catalog items, {len(prepared.neighbours)} neighbour lists, "
        f"{len(prepared.trending)} trending items, {len(prepared.item_stats)} item statistics; "
        f"topics {settings.topic} ({partitions} partitions), "
        f"{settings.dlq_topic}"
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


def describe(prepared: Prepared) -> str:
    """What `prepare` produced, for a person: the conversion report and the split sizes."""
    s = prepared.summary
    lines = [str(prepared.report)] if prepared.report else []
    lines.append(
        f"split at {prepared.split.train_end:%Y-%m-%d} / {prepared.split.valid_end:%Y-%m-%d}: "
        f"train {s.get('train_rows', 0):,} rows, valid {s.get('valid_rows', 0):,}, test {s.get('test_rows', 0):,}; "
        f"{s.get('items_with_neighbours', 0):,} items with co-visitation neighbours"
        + (" (reused)" if prepared.reused else "")
    )
    return "\n".join(lines)
