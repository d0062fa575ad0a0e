"""Session fixtures for integration tests: the real Kafka and Redis, and a tiny real model artifact."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from rankstream.deploy import stack as local_stack
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings
from rankstream.stream.signals import ItemStats
from rankstream.stream.store import Store
from tests.live_seed import seed_lists

CATALOG = {
    f"I{i:03d}": f"{colour} {thing}"
    for i, (colour, thing) in enumerate(
        (c, t)
        for c in ("red", "blue", "green", "white", "pink")
        for t in ("mug", "candle holder", "lunch bag", "doormat", "cake stand", "tea towel")
    )
}
ITEMS = sorted(CATALOG)
# Each item's neighbours: the next few items, so every user gets candidates.
NEIGHBOURS = {it: [ITEMS[(i + d) % len(ITEMS)] for d in range(1, 8)] for i, it in enumerate(ITEMS)}
TRENDING = ITEMS[:10]
ITEM_STATS = {
    it: ItemStats(baskets=10 + i, baskets_7d=i % 3, baskets_30d=i % 7, buyers=5 + i, age_days=30 + i)
    for i, it in enumerate(ITEMS)
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackInfo]:
    state = tmp_path_factory.mktemp("stack")
    info = local_stack.up(state)
    yield info
    local_stack.down(state)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact (tiny random-weight BERT with a signal head, briefly trained, exported, INT8) built
    once per session by the compress job's `tiny` preset: the scorer serves it with the signals it computes
    from the tables in Redis."""
    from rankstream.compression.pairs import LabelledPair
    from rankstream.compression.signal_head import SignalHead
    from rankstream.jobs.build import build_artifact
    from rankstream.jobs.presets import tiny
    from rankstream.stream.signals import SIGNALS, candidate_signals

    def row(history: list[str], item: str) -> tuple[float, ...]:
        return tuple(float(v) for v in candidate_signals(history, [item], NEIGHBOURS, ITEM_STATS, CATALOG)[0])

    pairs = [
        LabelledPair(f"{CATALOG[a]} ; {CATALOG[b]}", CATALOG[c], float(k % 2), row([a, b], c))
        for k, (a, b, c) in enumerate(zip(ITEMS, ITEMS[3:], ITEMS[7:], strict=False))
    ]
    groups = [pairs[i : i + 2] for i in range(0, len(pairs), 2)]  # listwise: a negative and a positive each
    n = len(SIGNALS.names)
    head = SignalHead(SIGNALS.version, SIGNALS.names, (0.0,) * n, (1.0,) * n, tuple(0.1 * (i + 1) for i in range(n)))
    return build_artifact(
        groups, tmp_path_factory.mktemp("models"), version="vtest-tiny", preset=tiny(), prior=[0.5, 0.0], head=head
    )


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bi-encoder artifact (fp32), built once."""
    from rankstream.compression.encoder_export import REFERENCE_TITLES, export_encoder
    from rankstream.compression.tiny import tiny_encoder

    root = tmp_path_factory.mktemp("catalog-encoder")
    hf = tiny_encoder(root / "hf", seed=0)
    return export_encoder(hf, root / "e-tiny", quantize="none", reference_titles=REFERENCE_TITLES, version="e-tiny")


@pytest.fixture
async def store(stack: local_stack.StackInfo) -> AsyncIterator[Store]:
    """A Store on a flushed Redis with the test catalog loaded."""
    client = aioredis.from_url(stack.redis_url, decode_responses=True)
    await client.flushdb()
    s = Store(client, ttl_s=3600)
    await seed_lists(s, CATALOG, NEIGHBOURS, TRENDING, ITEM_STATS)
    yield s
    await s.close()


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another real artifact, trained on the opposite labels, so its scores differ from tiny_model's."""
    from rankstream.compression.pairs import LabelledPair
    from rankstream.jobs.build import build_artifact
    from rankstream.jobs.presets import tiny

    pairs = [
        LabelledPair(f"{CATALOG[a]} ; {CATALOG[b]}", CATALOG[c], float((k + 1) % 2))
        for k, (a, b, c) in enumerate(zip(ITEMS, ITEMS[3:], ITEMS[7:], strict=False))
    ]
    groups = [pairs[i : i + 2] for i in range(0, len(pairs), 2)]
    return build_artifact(groups, tmp_path_factory.mktemp("models-b"), version="vtest-tiny-b", preset=tiny())


@pytest.fixture
def registry(store: Store, tiny_model: Path, second_model: Path, tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry", store.client)
    reg.add(tiny_model)
    reg.add(second_model)
    return reg


def scorer_settings(stack: local_stack.StackInfo, topic: str, **overrides: Any) -> Settings:
    """Scorer settings on the session stack for `topic` (its own DLQ topic and group, short lists)."""
    base: dict[str, Any] = {
        "kafka_bootstrap": stack.bootstrap,
        "redis_url": stack.redis_url,
        "topic": topic,
        "dlq_topic": f"{topic}.dlq",
        "group_id": f"g-{topic}",
        "top_k": 5,
        "candidates": 10,
    }
    return Settings(**(base | overrides))


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test, so tests never see each other's events."""
    return f"clicks-{uuid.uuid4().hex[:8]}"


async def wait_for(predicate, limit_s: float = 60.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns something truthy; fail the test on timeout."""
    async with asyncio.timeout(limit_s):
        while True:
            result = await predicate()
            if result:
                return result
            await asyncio.sleep(every)


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Redis with ACL users and TLS only, Kafka with SASL_SSL (SCRAM-SHA-512) only, and the CA that signed
    both, in a temp dir (tests/integration/secure.py); started for the security tests only."""
    from .secure import start_stack, stop_stack

    secured = start_stack(tmp_path_factory.mktemp("secure"))
    yield secured
    stop_stack(secured)


@pytest.fixture(scope="session")
def replicated_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A primary, one replica and three Sentinels, real redis-server processes on free ports
    (deploy/redis_local.py); started for the failover tests only."""
    from rankstream.deploy import redis_local

    replicated = redis_local.start_replicated(tmp_path_factory.mktemp("replicated"))
    yield replicated
    redis_local.stop_replicated(replicated)


def catalog_settings(stack: local_stack.StackInfo, encoder_dir: Path) -> Settings:
    """Settings for the catalog job on the test stack: topics and a group of its own, `encoder_dir` its encoder."""
    name = f"catalog-{uuid.uuid4().hex[:8]}"
    return Settings(
        kafka_bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        catalog_topic=name,
        catalog_dlq_topic=f"{name}.dlq",
        catalog_group_id=f"g-{name}",
        encoder_dir=encoder_dir,
    )
