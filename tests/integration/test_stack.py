"""The local stack launcher against the real services: a Kafka 4.1.1 broker (KRaft) and redis-server.

These tests own a stack of their own (not the session one in conftest.py): they restart and stop it.
They run in file order; the last one takes the stack down.
"""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from rankstream.deploy import kafka_local, redis_local
from rankstream.deploy import stack as local_stack
from rankstream.deploy.errors import StackError


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (stopped, waiting to be reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


async def _roundtrip(bootstrap: str, topic: str) -> bytes:
    """Produce one message and read it back from the beginning of the topic."""
    value = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"u1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                record = await consumer.getone()
                if record.value == value:
                    return record.value
    finally:
        await consumer.stop()


async def _ping(redis_url: str) -> bool:
    client = aioredis.from_url(redis_url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("own-stack")
    yield path
    local_stack.down(path)  # also when a test failed half-way


@pytest.fixture(scope="module")
def info(state_dir: Path) -> local_stack.StackInfo:
    return local_stack.up(state_dir)


@pytest.mark.integration
async def test_up_serves_kafka_and_redis(info: local_stack.StackInfo) -> None:
    assert info.kafka_pid and info.redis_pid
    assert info.bootstrap.startswith("127.0.0.1:") and info.redis_url.startswith("redis://127.0.0.1:")
    assert await _roundtrip(info.bootstrap, f"t-{uuid.uuid4().hex[:8]}")
    assert await _ping(info.redis_url)


@pytest.mark.integration
def test_status_reports_the_running_stack(info: local_stack.StackInfo, state_dir: Path) -> None:
    assert local_stack.status(state_dir) == info


@pytest.mark.integration
def test_up_again_is_idempotent(info: local_stack.StackInfo, state_dir: Path) -> None:
    again = local_stack.up(state_dir)
    assert (again.kafka_pid, again.redis_pid) == (info.kafka_pid, info.redis_pid)
    assert again == info
    with pytest.raises(StackError, match="already runs on port"):
        local_stack.up(state_dir, kafka_port=int(info.bootstrap.rsplit(":", 1)[1]) + 1)


@pytest.mark.integration
async def test_create_topics_is_idempotent(info: local_stack.StackInfo) -> None:
    topics = {f"c-{uuid.uuid4().hex[:8]}": 4, f"d-{uuid.uuid4().hex[:8]}": 1}
    local_stack.create_topics(info.bootstrap, topics)
    local_stack.create_topics(info.bootstrap, topics)  # TopicAlreadyExists is not an error
    admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    assert {d["topic"]: len(d["partitions"]) for d in described} == topics


@pytest.mark.integration
async def test_kafka_restart_keeps_port_and_data(info: local_stack.StackInfo, state_dir: Path) -> None:
    topic = f"r-{uuid.uuid4().hex[:8]}"
    local_stack.create_topics(info.bootstrap, {topic: 1})
    await _roundtrip(info.bootstrap, topic)
    after = local_stack.restart_kafka(state_dir, kill=True)  # a crash, then a restart on the same storage
    assert after.bootstrap == info.bootstrap and after.kafka_pid != info.kafka_pid
    assert after.redis_pid == info.redis_pid
    assert _gone(info.kafka_pid or 0)
    await _roundtrip(after.bootstrap, topic)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=after.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            got = await consumer.getmany(timeout_ms=10_000)
        assert sum(len(batch) for batch in got.values()) >= 2  # the message from before the crash survived
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_redis_stop_and_start(state_dir: Path) -> None:
    before = local_stack.status(state_dir)
    assert before and before.redis_pid
    local_stack.stop_redis(state_dir)
    stopped = local_stack.status(state_dir)
    assert stopped and stopped.redis_pid is None and stopped.kafka_pid == before.kafka_pid
    assert _gone(before.redis_pid)
    after = local_stack.start_redis(state_dir)
    assert after.redis_url == before.redis_url and after.redis_pid not in (None, before.redis_pid)
    assert await _ping(after.redis_url)


@pytest.mark.integration
def test_down_stops_both(state_dir: Path) -> None:
    running = local_stack.status(state_dir)
    assert running and running.kafka_pid and running.redis_pid
    local_stack.down(state_dir)
    assert _gone(running.kafka_pid) and _gone(running.redis_pid)
    assert local_stack.status(state_dir) is None
    local_stack.down(state_dir)  # nothing left to stop: a no-op


def test_missing_commands_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("RANKSTREAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StackError, match=r"apt-get install -y redis-server"):
        redis_local.server_argv(6379, tmp_path / "redis")
    with pytest.raises(StackError, match=r"apt-get install -y openjdk-17-jre-headless"):
        kafka_local.java()
    with pytest.raises(StackError, match=r"apt-get install -y maven"):
        kafka_local.ensure_kafka_jars()
