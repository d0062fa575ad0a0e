"""`rankstream bench catalog`: how long a new item takes from the catalog topic to every scorer, under load.

Scorer processes (as `bench swap` runs them, with text retrieval on) and one catalog job serve a steady
load of test-period events. Every `every_s` a new item is published on the catalog topic, its title an
existing item's with a word added. Two times per item, both from the writers' own clocks:
- stored: the change entry's id in `{rs:catalog}:changes` (Redis's clock when the job's MULTI/EXEC ran);
- servable: when the last scorer replica had applied it to its catalog and text index (each replica
  reports its newest applied entry and when, `{rs:catalog}:seen`, polled every `_POLL_S`; a report that
  already covers a later item is only read if two items land within one poll, which the spacing avoids).
A second after each item is servable, a fresh user clicks the item whose title it copied: the share of
those users whose list then holds the new item says how often the ranker shows a new item that text
retrieval put among the candidates (not a timing; a ranker decides it).
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from rankstream.bench.replicas import Replica, free_port, replica_env, spawn, stop_all, wait_ready
from rankstream.bench.results import Record
from rankstream.bench.stream import count_not_reflected, produce_events
from rankstream.bench.swap import bench_settings, drained, open_registry, spawn_fleet
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.catalog import embed_catalog, wait_applied, write_title_vectors
from rankstream.ops.load import split_events
from rankstream.stream.catalog import CatalogItem
from rankstream.stream.catalogstore import newest_change
from rankstream.stream.events import ClickEvent
from rankstream.stream.retrieval import MergeHead
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

_POLL_S = 0.02
_SETTLE_S = 5.0
_PROBE_AFTER_S = 1.0
_AFTER = timedelta(minutes=1)  # a probe click this long after the last replayed event
_WAIT_S = 30.0  # an item not servable by then counts as never


@dataclass(frozen=True)
class Times(Record):
    """p50, p99 and max (ms) of one time per item; numpy's interpolation, so 100 items give a p99 too."""

    p50: float | None
    p99: float | None
    max: float | None


def times_of(values: list[float]) -> Times:
    if not values:
        return Times(None, None, None)
    a = np.asarray(values)
    return Times(round(float(np.percentile(a, 50)), 1), round(float(np.percentile(a, 99)), 1), round(float(a.max()), 1))


@dataclass(frozen=True)
class CatalogBench(Record):
    """`bench catalog`: times from publishing an item (ms), probe users, and the load's own figures."""

    items: int
    rate: float
    replicas: int
    text_candidates: int
    merge: str  # the learned merge's version ("" for none: the interleave of `text_candidates`)
    encoder: str
    model: str
    publish_to_stored_ms: Times
    publish_to_servable_ms: Times
    never_servable: int
    probes: int
    probes_listing_new: int
    events: int
    dlq: int
    users_not_reflected: int


async def _publish_one(
    producer: AIOKafkaProducer, settings: Settings, store: Store, item: CatalogItem, replicas: list[str]
) -> tuple[float | None, float | None]:
    """Publish one item; (publish -> stored, publish -> servable by every replica) in ms, None if not within _WAIT_S."""
    after = await newest_change(store.client)
    t0 = time.time() * 1000
    await (await producer.send(settings.catalog_topic, key=item.key(), value=item.to_bytes()))
    got = await wait_applied(store.client, item.item_id, after, replicas, _WAIT_S, _POLL_S)
    return (
        None if got.stored_ms is None else got.stored_ms - t0,
        None if got.servable_ms is None else got.servable_ms - t0,
    )


async def bench_catalog(
    home: Path,
    model: Path,
    encoder: Path,
    *,
    items: int = 100,
    rate: float = 300.0,
    every_s: float = 0.5,
    replicas: int = 1,
    text_candidates: int = 20,
    merge: Path | None = None,
) -> CatalogBench:
    """Run the load, publish `items` new items one every `every_s`, and return the figures (module docstring)."""
    settings = bench_settings(home, "bench-catalog")
    name = settings.topic
    text_candidates = 0 if merge is not None else text_candidates  # the merge pools its own
    settings = _with_catalog(settings, name, encoder, text_candidates, merge)
    store, registry, versions = await open_registry(settings, home, [model], "bench-catalog", distinct=1)
    folder = home / "bench-catalog" / "replicas"
    try:
        await asyncio.to_thread(
            create_topics,
            settings.kafka_bootstrap,
            {name: 4, f"{name}.dlq": 1, settings.catalog_topic: 1, settings.catalog_dlq_topic: 1},
        )
        catalog = await store.read_catalog()
        vectors = await embed_catalog(settings, catalog)
        await write_title_vectors(store.client, vectors)
        evs = split_events(home / "data", "test", None)
        duration = _SETTLE_S + items * (every_s + _PROBE_AFTER_S) + 60
        needed = int(rate * duration)
        events = (evs * (needed // len(evs) + 1))[:needed]
        extra = {
            "encoder_dir": encoder,
            "text_candidates": text_candidates,
            **({} if merge is None else {"merge_dir": merge}),
            "catalog_topic": settings.catalog_topic,
            "catalog_dlq_topic": settings.catalog_dlq_topic,
            "catalog_group_id": settings.catalog_group_id,
        }
        fleet = spawn_fleet(settings, registry, replicas, folder, **extra)
        job = _spawn_job(settings, folder, extra)
        try:
            await wait_ready([*fleet, job])
            producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, name, events, rate))
            await asyncio.sleep(_SETTLE_S)
            stored, servable, probes = await _publish_items(
                settings, store, catalog, [r.name for r in fleet], items, every_s, max(e.ts for e in evs) + _AFTER
            )
            last = await producing
            await drained(settings)
        finally:
            stop_all([*fleet, job])
        stats = [r.stats() for r in fleet]
        listing = await _probes_listing(store, probes)
        not_reflected = await count_not_reflected(store, name, last)
    finally:
        await store.close()
    return CatalogBench(
        items=items,
        rate=rate,
        replicas=replicas,
        text_candidates=text_candidates,
        merge="" if merge is None else MergeHead.read(merge).version,
        encoder=vectors.version if vectors else "",
        model=versions[0],
        publish_to_stored_ms=times_of([s for s in stored if s is not None]),
        publish_to_servable_ms=times_of([s for s in servable if s is not None]),
        never_servable=sum(s is None for s in servable),
        probes=len(probes),
        probes_listing_new=listing,
        events=sum(s.events for s in stats) + len(probes),
        dlq=sum(s.dlq for s in stats),
        users_not_reflected=not_reflected,
    )


def _with_catalog(
    settings: Settings, name: str, encoder: Path, text_candidates: int, merge: Path | None = None
) -> Settings:
    """The bench's settings with a fresh catalog topic, its DLQ and group, and text retrieval on."""
    return settings.model_copy(
        update={
            "catalog_topic": f"{name}.catalog",
            "catalog_dlq_topic": f"{name}.catalog.dlq",
            "catalog_group_id": f"g-{name}.catalog",
            "encoder_dir": encoder,
            "text_candidates": text_candidates,
            "merge_dir": merge,
        }
    )


def _spawn_job(settings: Settings, folder: Path, extra: dict[str, object]) -> Replica:
    common = {"kafka_bootstrap": settings.kafka_bootstrap, "redis_url": settings.redis_url} | extra
    env = replica_env(dict(os.environ), free_port(), **common)
    return spawn("catalog-job", env, folder, command=("catalog", "serve"))


async def _publish_items(
    settings: Settings,
    store: Store,
    catalog: dict[str, str],
    replicas: list[str],
    items: int,
    every_s: float,
    at: datetime,
) -> tuple[list[float | None], list[float | None], dict[str, str]]:
    """Publish the new items one at a time; their times, and probe user -> the new item they should meet.

    A probe's click carries the time `at`, just after the replayed events: the signals then weigh each
    item's sales in the days before it, as for the users around it. At the wall-clock time, years after
    the data, every item's recent sales would be zero and a new item would compete with none."""
    sources = sorted(catalog)[:items]
    stored: list[float | None] = []
    servable: list[float | None] = []
    probes: dict[str, str] = {}
    producer = AIOKafkaProducer(acks="all", **settings.kafka_client_options())
    await producer.start()
    try:
        for k, source in enumerate(sources):
            item = CatalogItem(item_id=f"NEW{k:04d}-{int(time.time())}", title=f"{catalog[source]} NEW")
            st, sv = await _publish_one(producer, settings, store, item, replicas)
            stored.append(st)
            servable.append(sv)
            await asyncio.sleep(_PROBE_AFTER_S)
            user = f"probe-{item.item_id}"
            probes[user] = item.item_id
            click = ClickEvent(user_id=user, item_id=source, ts=at)
            await producer.send(settings.topic, key=user.encode(), value=click.to_bytes())
            await asyncio.sleep(every_s)
        await producer.flush()
    finally:
        await producer.stop()
    return stored, servable, probes


async def _probes_listing(store: Store, probes: dict[str, str]) -> int:
    """How many probe users' lists hold the new item their click should have brought."""
    hits = 0
    for user, item in probes.items():
        doc = await store.read_list(user)
        if doc is not None and item in {i["item_id"] for i in doc["items"]}:
            hits += 1
    return hits


def format_catalog(r: CatalogBench) -> str:
    def cell(p: Times) -> str:
        return f"p50 {p.p50} / p99 {p.p99} / max {p.max}"

    rows = [
        f"new items: {r.items} at one per publish under {r.rate:g} events/s, {r.replicas} scorer replica(s), "
        f"{f'learned merge {r.merge}' if r.merge else f'{r.text_candidates} text candidates'}, "
        f"encoder {r.encoder}, model {r.model}",
        f"publish -> stored (catalog job): {cell(r.publish_to_stored_ms)} ms",
        f"publish -> servable (every replica): {cell(r.publish_to_servable_ms)} ms; never: {r.never_servable}",
        f"probe users whose list holds the new item: {r.probes_listing_new} / {r.probes}",
        f"events {r.events}, dead-lettered {r.dlq}, users not reflected {r.users_not_reflected}",
    ]
    return "\n".join(rows)
