"""Redis Cluster, for real: a local 3-master cluster; the store, the write fence and the registry on it."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from rankstream.deploy import redis_local
from rankstream.stream.artifact import InputSpec, Reference, write_manifest
from rankstream.stream.errors import StoreError
from rankstream.stream.live import LiveParams
from rankstream.stream.livestore import FenceMoved, read_share, seed, share_keys, write_share
from rankstream.stream.ranker import Ranker
from rankstream.stream.redis_client import connect
from rankstream.stream.registry import ACTIVE_KEY, ANNOUNCE_CHANNEL, LOG_KEY, SERVING_KEY, Registry
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import load_settings
from rankstream.stream.store import ListWrite, Store, hist_key, rec_key
from rankstream.stream.tables import Tables
from tests.live_seed import seed_lists, share_from_lists

from .conftest import CATALOG, ITEM_STATS, ITEMS, NEIGHBOURS, TRENDING, scorer_settings
from .serving import events_for, produce, run_until_drained, setup_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = [f"u{i}" for i in range(30)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_local.LocalCluster]:
    c = redis_local.start_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield c
    redis_local.stop_cluster(c)


@pytest.fixture
async def cstore(cluster: redis_local.LocalCluster) -> AsyncIterator[Store]:
    """A Store made the way the CLI makes it (settings -> Store.from_settings), on a flushed cluster, tables loaded."""
    store = Store.from_settings(load_settings(redis_url=cluster.url, redis_cluster=True))
    assert isinstance(store.client, aioredis.RedisCluster)
    await store.client.flushdb()  # sent to every primary
    await seed_lists(store, CATALOG, NEIGHBOURS, TRENDING, ITEM_STATS)
    yield store
    await store.close()


def node_keys(cluster: redis_local.LocalCluster, pattern: str) -> dict[int, set[str]]:
    """Each master's own keys matching `pattern`, asked of each node directly (not through the cluster client)."""
    out = {}
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        try:
            out[port] = set(node.keys(pattern))
        finally:
            node.close()
    return out


def write(user: str, offset: int, item: str, ts: int = 1_000) -> ListWrite:
    return ListWrite(user, (item, "I001"), ((item, 2.0), ("I002", 1.0)), "v1", 0, offset, ts, topic="clicks")


async def test_live_tables_round_trip_on_the_cluster(cstore: Store, cluster: redis_local.LocalCluster) -> None:
    assert await cstore.read_catalog() == CATALOG
    # Four shares, each one slot: the fenced write of each is one script wherever its slot lives.
    shares = [share_from_lists({it: NEIGHBOURS[it][p::4] for it in ITEMS}, TRENDING[p::4]) for p in range(4)]
    await seed(cstore.client, "clicks", shares, LiveParams())
    tables = Tables(cstore, max_age_s=0)
    await tables.load()
    assert tables.partitions == 4
    got = await tables.neighbours_for(ITEMS[:3] + ["missing"])
    assert {it: set(v) for it, v in got.items()} == {**{it: set(NEIGHBOURS[it]) for it in ITEMS[:3]}, "missing": set()}
    assert set(await tables.trending()) == set(TRENDING)
    share = await read_share(cstore.client, "clicks", 2, LiveParams())
    share.apply("u", ITEMS[0], 1_300_000_000_000, offset=0)
    await write_share(cstore.client, "clicks", 2, share, share.take_dirty(), expected=-1)
    with pytest.raises(FenceMoved):
        await write_share(cstore.client, "clicks", 2, share, share.take_dirty(), expected=-1)
    slots = {key_slot(k.encode()) for k in share_keys("clicks", 2)}
    assert len(slots) == 1
    spread = [keys for keys in node_keys(cluster, "rs:lt:*").values() if keys]
    assert len(spread) >= 2  # the shares live on several masters


async def test_fenced_lists_spread_over_all_masters(cstore: Store, cluster: redis_local.LocalCluster) -> None:
    applied = (await cstore.write_lists([write(u, 10, ITEMS[i]) for i, u in enumerate(USERS)], {"v1": (30, 7)})).applied
    assert applied == len(USERS)

    recs, hists = node_keys(cluster, "rec:*"), node_keys(cluster, "hist:*")
    assert sum(len(k) for k in recs.values()) == len(USERS)
    assert sum(1 for k in recs.values() if k) == 3  # every master holds some users
    for port in cluster.ports:  # a user's two keys share a hash tag, so one slot, so one node
        assert {k.replace("rec:", "hist:") for k in recs[port]} == hists[port]

    # A replayed older batch and a replay of the same offsets are fenced on every node; a newer one applies.
    assert (await cstore.write_lists([write(u, 9, "I029") for u in USERS], {"v1": (30, 0)})).applied == 0
    assert (await cstore.write_lists([write(u, 10, "I029") for u in USERS])).applied == 0
    assert (await cstore.write_lists([write(u, 11, "I028") for u in USERS[:5]])).applied == 5
    for i, u in enumerate(USERS):
        rec = await cstore.read_list(u)
        assert rec is not None and rec["items"][0]["item_id"] == ("I028" if i < 5 else ITEMS[i])

    states, bad = await cstore.read_states([*USERS, "nobody"])
    assert bad == {}
    assert states["nobody"].partition is None
    for i, u in enumerate(USERS):
        s = states[u]
        assert (s.topic, s.partition, s.offset) == ("clicks", 0, 11 if i < 5 else 10)
        assert s.items[0] == ("I028" if i < 5 else ITEMS[i]) and s.shown_version == "v1"
    assert 0 < await cstore.client.ttl(rec_key(USERS[0])) <= 3600 * 24 * 7
    assert await cstore.client.hget(hist_key(USERS[0]), "o") == "11"

    assert await cstore.read_quality() == {"v1": {"events": 60, "hits": 7, "hit_rate": 7 / 60}}


def fake_artifact(root: Path, version: str) -> Path:
    """A directory whose manifest verifies (the registry checks checksums only; nothing here is scored)."""
    directory = root / version
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(version.encode())
    (directory / "tokenizer.json").write_text("{}")
    write_manifest(
        directory,
        version=version,
        parent=None,
        method_chain=["test"],
        metrics={},
        input_spec=InputSpec(pair_format="test"),
        reference=Reference(pairs=(), scores=()),
    )
    return directory


async def next_message(pubsub: aioredis.client.PubSub) -> str:
    async with asyncio.timeout(5):
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if msg is not None:
                return str(msg["data"])


async def test_registry_and_announcements_on_the_cluster(cluster: redis_local.LocalCluster, tmp_path: Path) -> None:
    client = connect(cluster.url, cluster=True)
    assert isinstance(client, aioredis.RedisCluster)
    await client.flushdb()
    registry = Registry(tmp_path / "registry", client)
    a = registry.add(fake_artifact(tmp_path / "built", "v-a"))
    b = registry.add(fake_artifact(tmp_path / "built", "v-b"))

    # What a replica does (stream/follow.py), plus one subscriber pinned to each master: a PUBLISH
    # reaches subscribers on every node, whichever node a replica's subscription landed on.
    follower_like = client.pubsub()
    per_node = [client.pubsub(node=n) for n in client.get_primaries()]
    assert len(per_node) == 3
    try:
        for ps in [follower_like, *per_node]:
            await ps.subscribe(ANNOUNCE_CHANNEL)
        await registry.activate(a, "publish")  # MULTI over the {model} keys: one slot
        await registry.promote(b)
        record = await registry.rollback()
        assert (record.previous, record.version, await registry.active()) == (b, a, a)
        for ps in [follower_like, *per_node]:
            assert [await next_message(ps) for _ in range(3)] == [a, b, a]
    finally:
        for ps in [follower_like, *per_node]:
            await ps.aclose()
    assert [r.reason for r in await registry.activations()] == ["rollback", "promote", "publish"]

    await registry.report_serving("replica-1", a, 1.0)
    await registry.report_serving("replica-2", b, 2.0)
    assert {k: v["version"] for k, v in (await registry.serving()).items()} == {"replica-1": a, "replica-2": b}
    await registry.pin(b)
    assert (await registry.publish(registry.path(a)), await registry.active()) == ((a, False), b)
    await registry.unpin()
    assert await registry.pinned() is None

    holders = [port for port, keys in node_keys(cluster, "rs:{model}:*").items() if keys]
    assert len(holders) == 1  # the hash tag keeps every registry key on one node
    assert node_keys(cluster, "rs:{model}:*")[holders[0]] == {ACTIVE_KEY, LOG_KEY, SERVING_KEY}
    await client.aclose()


async def test_a_cluster_outage_is_a_retriable_store_error(tmp_path: Path) -> None:
    own = redis_local.start_cluster(tmp_path / "doomed", masters=3)
    try:
        store = Store.from_url(own.url, cluster=True, ttl_s=60, socket_timeout=1, socket_connect_timeout=1)
        await store.ping()
    finally:
        redis_local.stop_cluster(own)
    # redis-py raises RedisClusterException (not a RedisError) when no node answers; the scorer must
    # see the StoreError it backs off and retries on, not crash.
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.write_lists([write("u0", 1, "I000")])
    with pytest.raises(StoreError):
        await store.read_states(["u0"])
    await store.close()


async def test_the_scorer_serves_from_kafka_into_the_cluster(
    stack, cluster: redis_local.LocalCluster, tiny_model: Path, topic: str
) -> None:  # type: ignore[no-untyped-def]
    s = scorer_settings(
        stack,
        topic,
        redis_url=cluster.url,
        redis_cluster=True,
        model_dir=tiny_model,
        batch_max_records=20,
        batch_linger_ms=50,
        threads=1,
    )
    store = Store.from_settings(s)
    await store.client.flushdb()
    await seed_lists(store, CATALOG, NEIGHBOURS, TRENDING, ITEM_STATS)
    await setup_topics(stack, topic)
    evs = events_for(users=12, per_user=3)
    await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])
    scorer = Scorer(s, Ranker.load(tiny_model, threads=1), store)
    await run_until_drained(scorer, s)

    assert scorer.stats.events == len(evs) and scorer.stats.dlq == 0
    for u in range(12):
        rec = await store.read_list(f"u{u}")
        assert rec is not None and rec["model_version"] == "vtest-tiny" and 1 <= len(rec["items"]) <= 5
        mine = [e.item_id for e in evs if e.user_id == f"u{u}"]
        assert await store.read_history(f"u{u}") == list(reversed(mine))
    assert sum(1 for keys in node_keys(cluster, "rec:*").values() if keys) == 3
    quality = await store.read_quality()
    assert quality["vtest-tiny"]["events"] > 0
    await store.close()
