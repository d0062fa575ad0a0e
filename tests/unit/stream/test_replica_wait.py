"""Redis failover settings (Sentinel, WAIT) and what the store sends with them, without a server: the
pipeline's execute is replaced by one that records the commands and answers as Redis would."""

from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ResponseError

from rankstream.stream.errors import ConfigError, StoreError
from rankstream.stream.redis_client import SentinelPrimary, connect_from_settings
from rankstream.stream.settings import load_settings
from rankstream.stream.store import WAIT_CHANNEL, ListWrite, Store

WRITE = ListWrite("u1", ("I001",), (("I002", 1.0),), "v1", 0, 5, 1_000, "clicks")


def test_no_waiting_and_no_sentinels_by_default() -> None:
    s = load_settings()
    assert s.redis_wait_replicas == 0 and s.redis_wait_timeout_ms == 1000
    assert s.redis_sentinels == () and s.redis_sentinel_master == "mymaster"


def test_sentinels_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSTREAM_REDIS_SENTINELS", "10.0.0.1:26379, sentinel-2:26380")
    s = load_settings()
    assert s.sentinel_addresses() == [("10.0.0.1", 26379), ("sentinel-2", 26380)]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"redis_sentinels": "10.0.0.1"}, "'10.0.0.1' is not host:port"),
        ({"redis_sentinels": "10.0.0.1:0"}, "is not host:port"),
        ({"redis_sentinels": "s:26379", "redis_cluster": True}, "unset one of them"),
        ({"redis_sentinels": "s:26379", "redis_url": "rediss://r:6380/0"}, "use redis:// or unset"),
        ({"redis_sentinels": "s:26379", "redis_sentinel_master": ""}, "RANKSTREAM_REDIS_SENTINEL_MASTER is empty"),
        ({"redis_wait_replicas": 1, "redis_cluster": True}, "set RANKSTREAM_REDIS_WAIT_REPLICAS=0"),
        (
            {"redis_wait_replicas": 1, "redis_wait_timeout_ms": 5000, "redis_timeout_s": 5},
            "lower RANKSTREAM_REDIS_WAIT_TIMEOUT_MS or raise RANKSTREAM_REDIS_TIMEOUT_S",
        ),
        ({"redis_wait_timeout_ms": 0}, "RANKSTREAM_REDIS_WAIT_TIMEOUT_MS"),
    ],
)
def test_bad_combinations_say_what_to_fix(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(**overrides)


async def test_sentinels_make_a_client_of_the_primary_they_name() -> None:
    s = load_settings(
        redis_url="redis://ignored:6379/3", redis_sentinels="10.0.0.1:26379,10.0.0.2:26379", redis_password="pw"
    )
    client = connect_from_settings(s)  # nothing connects yet
    assert isinstance(client, SentinelPrimary)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [c.connection_pool.connection_kwargs["port"] for c in sentinels] == [26379, 26379]
    assert sentinels[0].connection_pool.connection_kwargs["password"] is None  # Sentinels get no AUTH
    await client.aclose()
    store = Store.from_settings(load_settings(redis_wait_replicas=2, redis_wait_timeout_ms=250))
    assert (store._wait_replicas, store._wait_timeout_ms) == (2, 250)
    await store.close()


def test_a_cluster_store_refuses_to_wait() -> None:
    with pytest.raises(ConfigError, match="RANKSTREAM_REDIS_WAIT_REPLICAS=0"):
        Store(RedisCluster(host="10.0.0.5", port=7000), ttl_s=60, wait_replicas=1)


Sent = list[list[tuple[Any, ...]]]


@pytest.fixture
def redis_answers(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], Any]], Sent]:
    """Replace pipeline execution: each command is answered by `answer(command name)`; returns what was sent."""

    def install(answer: Callable[[str], Any]) -> Sent:
        sent: Sent = []

        async def execute(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
            commands = [args for args, _ in self.command_stack]
            sent.append(commands)
            return [answer(str(args[0])) for args in commands]

        monkeypatch.setattr(Pipeline, "execute", execute)
        return sent

    return install


def reply(acked: Any) -> Callable[[str], Any]:
    """Redis's answers: every script wrote, HMGET finds a fence at offset 5, WAIT says `acked`."""
    answers = {"EVALSHA": 1, "HINCRBY": 1, "HMGET": ["I001", "clicks:0", "5"], "GET": None, "PUBLISH": 0, "WAIT": acked}
    return answers.__getitem__


async def test_without_waiting_the_round_trip_is_unchanged(redis_answers) -> None:  # type: ignore[no-untyped-def]
    sent = redis_answers(reply(0))
    store = Store(Redis(), ttl_s=60)
    assert (await store.write_lists([WRITE])).applied == 1
    states, _ = await store.read_states(["u1"])
    assert states["u1"].offset == 5
    assert [[c[0] for c in cmds] for cmds in sent] == [["EVALSHA"], ["HMGET", "GET"]]
    await store.close()


async def test_waiting_ends_each_round_trip_with_publish_and_wait(redis_answers) -> None:  # type: ignore[no-untyped-def]
    sent = redis_answers(reply(1))
    store = Store(Redis(), ttl_s=60, wait_replicas=1, wait_timeout_ms=300)
    assert (await store.write_lists([WRITE], {"v1": (2, 1)})).applied == 1
    states, bad = await store.read_states(["u1"])
    assert states["u1"].offset == 5 and bad == {}
    wait = [("PUBLISH", WAIT_CHANNEL, ""), ("WAIT", 1, 300)]
    assert sent[0][-2:] == wait and [c[0] for c in sent[0][:-2]] == ["EVALSHA", "HINCRBY", "HINCRBY"]
    assert sent[1] == [("HMGET", "hist:{u1}", "items", "p", "o"), ("GET", "rec:{u1}"), *wait]
    await store.close()


@pytest.mark.parametrize(
    "acked", [0, ResponseError("WAIT cannot be used with replica instances")], ids=["too-few", "replica"]
)
async def test_too_few_acknowledgements_fail_the_batch(redis_answers, acked: Any) -> None:  # type: ignore[no-untyped-def]
    redis_answers(reply(acked))
    store = Store(Redis(), ttl_s=60, wait_replicas=1, wait_timeout_ms=300)
    with pytest.raises(StoreError, match=r"not acknowledged by 1 replica\(s\) within 300 ms .* retried"):
        await store.write_lists([WRITE])
    with pytest.raises(StoreError, match="not acknowledged"):
        await store.read_states(["u1"])
    await store.close()
