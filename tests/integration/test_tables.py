"""The live-tables job on the real Kafka and Redis: `rankstream tables` processes killed with SIGKILL
over and over while a whole test period streams in end with the same tables as an uninterrupted run
and as the offline recomputation, exactly."""

import asyncio
import random
import socket
import uuid
from pathlib import Path

import pytest

from rankstream.bench.tables import Replicas, bench_tables_on, replica_env, stored_offsets
from rankstream.data.prepare import Split, prepare
from rankstream.deploy import stack as local_stack
from rankstream.ops.load import load_tables_and_topics, split_events
from rankstream.ops.replay import event_records, produce
from rankstream.stream.errors import RankstreamError
from rankstream.stream.livestore import META_KEY, read_meta, share_keys
from rankstream.stream.redis_client import connect
from rankstream.stream.settings import Settings
from tests.integration.test_health import get
from tests.model_builders import tiny_prepared

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def shop(folder: Path, users: int = 300, items: int = 120) -> Path:
    """Eight weeks of baskets in the BYO format: co-bought pairs, a few users coming back often."""
    rng = random.Random(1)
    folder.mkdir()
    lines = ["user_id,item_id,ts,event"]
    for user in range(users):
        for day in sorted(rng.sample(range(1, 57), rng.randint(3, 14))):
            a = rng.randrange(items // 2)
            hour = rng.randrange(8, 20)
            stamp = f"2024-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}T{hour:02d}:00:00Z"
            for item in {2 * a, 2 * a + 1, rng.randrange(items), rng.randrange(items)}:
                lines.append(f"u{user},i{item},{stamp},purchase")
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "catalog.csv").write_text("item_id,title\n" + "".join(f"i{n},Item {n}\n" for n in range(items)))
    return folder


async def test_twenty_kills_leave_the_tables_exactly_as_an_uninterrupted_run(
    stack: local_stack.StackInfo, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    prepare(shop(tmp_path / "src"), data, Split("2024-01-29", "2024-02-12"))
    settings = Settings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
    logs = tmp_path / "logs"
    logs.mkdir()
    result = await bench_tables_on(settings, data, logs, rate=300.0, replicas=2, kills=20, every_s=0.4)
    assert result.events > 1_000
    assert result.kills >= 20
    assert result.lost == 0
    assert result.differences == []
    assert result.equal_uninterrupted and result.equal_offline
    assert result.max_events_per_s > 0 and result.freshness_ms["p99"] > 0


async def loaded_topic(stack: local_stack.StackInfo, tmp_path: Path, prefix: str) -> tuple[Path, str, Settings]:
    """Tiny prepared data, a topic of its own with 2 partitions, `rankstream load` run on it."""
    data = tiny_prepared(tmp_path)
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, topic=topic, dlq_topic=f"{topic}.dlq"
    )
    await load_tables_and_topics(settings, data, partitions=2)
    return data, topic, settings


async def test_load_seeds_at_the_topics_end_so_records_already_there_are_not_counted_again(
    stack: local_stack.StackInfo, tmp_path: Path
) -> None:
    data, topic, settings = await loaded_topic(stack, tmp_path, "seeded")
    events = split_events(data, "test", 30)
    produced = await produce(stack.bootstrap, topic, event_records(events))
    await load_tables_and_topics(settings, data, partitions=2)  # the replayed records are now the past
    client = connect(stack.redis_url)
    try:
        stored = {p: int(await client.hget(share_keys(topic, p)[0], "offset")) for p in range(2)}
    finally:
        await client.aclose()
    last = {p: -1 for p in range(2)}
    for partition, offset in produced.last.values():
        last[partition] = max(last[partition], offset)
    assert stored == last and max(last.values()) >= 0


async def test_tables_in_another_format_are_refused_with_the_fix(store) -> None:  # type: ignore[no-untyped-def]
    client = store.client
    topic, partitions, _ = await read_meta(client)  # as seeded
    assert partitions >= 1 and topic
    for stale in ("1", None):
        if stale is None:
            await client.hdel(META_KEY, "format")
        else:
            await client.hset(META_KEY, "format", stale)
        with pytest.raises(RankstreamError, match="run `rankstream load` again"):
            await read_meta(client)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_share_that_cannot_be_read_waits_while_the_others_go_on(
    stack: local_stack.StackInfo, tmp_path: Path
) -> None:
    data, topic, settings = await loaded_topic(stack, tmp_path, "broken")
    client = connect(stack.redis_url)
    replicas = None
    try:
        _, nb, _, _, _, _ = share_keys(topic, 1)
        await client.delete(nb)
        await client.set(nb, "garbage")  # a stray tool's value of the wrong type
        port = free_port()
        env = {**replica_env(settings, topic), "RANKSTREAM_METRICS_PORT": str(port)}
        replicas = Replicas(env, 1, tmp_path)
        produced = await produce(stack.bootstrap, topic, event_records(split_events(data, "test", 60)))
        last = {p: max(o for q, o in produced.last.values() if q == p) for p in (0, 1)}
        for _ in range(300):
            replicas.check()  # it never exits
            offsets = await stored_offsets(client, topic)
            if offsets[0] == last[0]:
                break
            await asyncio.sleep(0.1)
        assert offsets[0] == last[0]  # the readable share went through its partition
        assert offsets[1] == -1  # the broken one counted nothing on top of what it cannot read
        code, metrics = await asyncio.to_thread(get, port, "/metrics")
        applied = next(line for line in metrics.splitlines() if line.startswith("rankstream_tables_events_total "))
        assert code == 200 and float(applied.split()[1]) > 0
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
    finally:
        if replicas is not None:
            replicas.stop()
        await client.aclose()
