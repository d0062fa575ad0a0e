"""The catalog topic on the real Kafka and Redis: `catalog add`/`remove` records, bad ones among them,
reach Redis as titles, vectors and change entries through the catalog job; a follower started before sees
them after refresh(); a job killed with SIGKILL mid-stream and started again loses and doubles nothing; the
topic is created compacted."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from rankstream.deploy import redis_local
from rankstream.deploy import stack as local_stack
from rankstream.ops.catalog import add_items, embed_catalog, publish, remove_items, write_title_vectors
from rankstream.stream.catalogjob import CatalogJob
from rankstream.stream.catalogstore import (
    CHANGES_KEY,
    Encoders,
    claim_encoder,
    pack,
    read_snapshot,
    textvec_key,
    unpack,
    write_changes,
)
from rankstream.stream.encoder import TextEncoder
from rankstream.stream.redis_client import connect
from rankstream.stream.settings import Settings
from rankstream.stream.store import CATALOG_KEY, Store
from rankstream.stream.textindex import CatalogFollower

from .conftest import CATALOG, catalog_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def settings(stack: local_stack.StackInfo, encoder_dir: Path) -> Settings:
    return catalog_settings(stack, encoder_dir)


@pytest.fixture
async def seeded(store: Store, settings: Settings) -> AsyncIterator[Store]:
    """The test catalog in Redis with its vectors, as `rankstream load` leaves it."""
    await write_title_vectors(store.client, await embed_catalog(settings, CATALOG))
    yield store


async def dead_letters(settings: Settings, expected: int) -> list[tuple[bytes | None, dict[str, str]]]:
    consumer = AIOKafkaConsumer(
        settings.catalog_dlq_topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, str]]] = []
    try:
        async with asyncio.timeout(30):
            while len(out) < expected:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.key, {k: v.decode() for k, v in r.headers}) for r in records]
    finally:
        await consumer.stop()
    return out


async def change_counts(client: aioredis.Redis) -> Counter[tuple[str, str]]:
    return Counter((f["item"], f["op"]) for _, f in await client.xrange(CHANGES_KEY))


async def test_items_bad_records_and_a_tombstone_reach_redis_and_a_follower(
    seeded: Store, settings: Settings, encoder_dir: Path, tmp_path: Path
) -> None:
    client = seeded.client
    encoder = TextEncoder.load(encoder_dir)
    follower = CatalogFollower(client, encoder.version, encoder.dim)
    await follower.load()
    assert follower.catalog == CATALOG and len(follower.index) == len(CATALOG)
    before = await change_counts(client)

    items = tmp_path / "new.csv"
    items.write_text(
        "item_id,title,category,price\n"
        "N001,orange teapot,kitchen,12.5\n"
        "N002,yellow picnic basket,,\n"
        "I000,red mug with spots,kitchen,3\n"  # a changed title
        "I002,red lunch bag,,\n"  # the same title: nothing to write
        "N003,,kitchen,1\n"  # refused here, never sent
    )
    sent, bad = await add_items(settings, items)
    assert sent == 4 and [(b.line, b.reason) for b in bad] == [(6, "invalid_title")]
    assert await remove_items(settings, ["I001", "NEVER-SEEN"]) == (2, [])
    raw_bad = [
        (b"N009", b'{"item_id": "N009", "title": '),
        (b"N009", json.dumps({"item_id": "OTHER", "title": "x"}).encode()),
        (b"N009", json.dumps({"item_id": "N009", "title": "x", "price": -2}).encode()),
        (b"a,b", None),
    ]
    await publish(settings, raw_bad)

    job = CatalogJob(settings, connect(settings.redis_url), encoder)
    await job.start()
    task = asyncio.create_task(job.run())
    try:
        await wait_for(lambda: client.hexists(CATALOG_KEY, "N002"), 60)
        await wait_for(lambda: asyncio.sleep(0, job.dead_lettered == 4), 30)
    finally:
        job.stop()
        await task
        await job.close()
        await job.client.aclose()

    titles = await client.hgetall(CATALOG_KEY)
    assert titles["N001"] == "orange teapot" and titles["I000"] == "red mug with spots"
    assert "I001" not in titles and len(titles) == len(CATALOG) + 2 - 1
    snap = await read_snapshot(client, encoder.version)
    assert set(snap.vectors) == set(titles)
    for it in ("N001", "N002", "I000"):
        np.testing.assert_allclose(unpack(snap.vectors[it], encoder.dim), encoder.encode([titles[it]])[0], atol=1e-6)
    assert await change_counts(client) - before == Counter(
        {("N001", "put"): 1, ("N002", "put"): 1, ("I000", "put"): 1, ("I001", "del"): 1}
    )
    letters = await dead_letters(settings, 4)
    assert sorted(h["reason"] for _, h in letters) == ["invalid_json", "invalid_key", "invalid_price", "key_mismatch"]
    assert all(h["source_topic"] == settings.catalog_topic for _, h in letters)

    assert await follower.refresh() == 4
    assert follower.catalog == titles
    assert set(follower.index.ids) == set(titles)
    assert follower.applied_at is not None and follower.last_id == (await client.xrevrange(CHANGES_KEY, count=1))[0][0]
    query = encoder.encode(["orange teapot"])
    assert follower.index.nearest(query, 1) == ["N001"]
    assert "I001" not in follower.index.nearest(encoder.encode(["blue mug"]), len(titles))
    assert await follower.refresh() == 0


async def cleanup_policies(bootstrap: str, topics: list[str]) -> dict[str, str]:
    """Each topic's cleanup.policy as the broker reports it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    policies = {}
    for response in responses:
        for error, _, _, name, entries, *_ in response.resources:
            assert error == 0, (name, error)
            policies[name] = next(entry[1] for entry in entries if entry[0] == "cleanup.policy")
    return policies


async def test_the_catalog_topic_is_created_compacted_and_its_dlq_is_not(settings: Settings) -> None:
    await publish(settings, [(b"C001", json.dumps({"item_id": "C001", "title": "a compacted item"}).encode())])
    policies = await cleanup_policies(settings.kafka_bootstrap, [settings.catalog_topic, settings.catalog_dlq_topic])
    assert policies == {settings.catalog_topic: "compact", settings.catalog_dlq_topic: "delete"}


def spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "RANKSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "RANKSTREAM_REDIS_URL": settings.redis_url,
        "RANKSTREAM_CATALOG_TOPIC": settings.catalog_topic,
        "RANKSTREAM_CATALOG_DLQ_TOPIC": settings.catalog_dlq_topic,
        "RANKSTREAM_CATALOG_GROUP_ID": settings.catalog_group_id,
        "RANKSTREAM_ENCODER_DIR": str(settings.encoder_dir),
        "RANKSTREAM_BATCH_MAX_RECORDS": "3",
        "RANKSTREAM_KAFKA_CONSUMER_OPTIONS": json.dumps({"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli", "catalog", "serve"], env=env, stdout=out, stderr=out
        )


async def test_a_job_killed_mid_stream_and_started_again_loses_and_doubles_nothing(
    seeded: Store, settings: Settings, tmp_path: Path
) -> None:
    client = seeded.client
    new = {f"K{i:03d}": f"{colour} thing number {i}" for i, colour in enumerate(["teal", "plum", "sand"] * 100)}
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"item_id": k, "title": t}) + "\n" for k, t in new.items()))
    assert (await add_items(settings, path)) == (len(new), [])
    await remove_items(settings, ["I003", "I004"])
    before = await change_counts(client)

    log = tmp_path / "catalog.log"
    first = spawn(settings, log)
    try:
        count = await wait_for(lambda: _grown(client, len(CATALOG) + 30), 90, every=0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert count < len(CATALOG) + len(new), "the first job finished before it was killed"
        second = spawn(settings, log)
        try:
            await wait_for(lambda: _grown(client, len(CATALOG) + len(new) - 2), 90)
            await wait_for(lambda: _removed(client, ["I003", "I004"]), 30)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()

    titles = await client.hgetall(CATALOG_KEY)
    assert {k: titles[k] for k in new} == new and "I003" not in titles
    snap = await read_snapshot(client, "e-tiny")
    assert set(snap.vectors) == set(titles)
    changes = await change_counts(client) - before
    assert changes == Counter({**{(k, "put"): 1 for k in new}, ("I003", "del"): 1, ("I004", "del"): 1})


async def _grown(client: aioredis.Redis, at_least: int) -> int | None:
    n = await client.hlen(CATALOG_KEY)
    return n if n >= at_least else None


async def _removed(client: aioredis.Redis, items: list[str]) -> bool:
    return not any([await client.hexists(CATALOG_KEY, it) for it in items])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_local.LocalCluster]:
    c = redis_local.start_cluster(tmp_path_factory.mktemp("catalog-cluster"), masters=3)
    yield c
    redis_local.stop_cluster(c)


async def test_catalog_writes_and_the_follower_work_on_a_redis_cluster(cluster: redis_local.LocalCluster) -> None:
    client = connect(cluster.url, cluster=True)
    try:
        await client.flushdb()
        vec = {it: np.eye(4, dtype=np.float32)[i % 4] for i, it in enumerate(["a", "b", "c"])}
        await claim_encoder(client, "v1", 4)
        v1 = Encoders(active="v1")
        await write_changes(client, v1, {it: (f"title {it}", {"v1": pack(v)}) for it, v in vec.items()}, [])
        follower = CatalogFollower(client, "v1", 4)
        await follower.load()
        assert follower.catalog == {"a": "title a", "b": "title b", "c": "title c"}
        await write_changes(client, v1, {"d": ("title d", {"v1": pack(vec["a"])})}, ["b"])
        assert await follower.refresh() == 2
        assert set(follower.catalog) == {"a", "c", "d"}
        assert follower.index.nearest(vec["a"], 2) == ["a", "d"]
        assert await client.hlen(textvec_key("v1")) == 3
    finally:
        await client.aclose()
