"""Tools for failover tests: settings through Sentinel, forced failovers, a watch on replicated state."""

import asyncio
import signal
import time
from typing import Any, Literal

import redis

from rankstream.deploy import redis_local
from rankstream.deploy.redis_local import LocalReplicated
from rankstream.stream.errors import StoreError
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

from .faults import Watch

Failover = Literal["sentinel", "kill"]


def replicated_settings(replicated: LocalReplicated, **overrides: Any) -> Settings:
    """Settings for a client of the set's primary through its Sentinels, waiting for the one replica."""
    base: dict[str, Any] = {
        "redis_sentinels": replicated.sentinel_list,
        "redis_sentinel_master": replicated.master_name,
        "redis_wait_replicas": 1,
        "redis_wait_timeout_ms": 300,
        "redis_timeout_s": 2,
    }
    return Settings(**(base | overrides))


def replicated_env(replicated: LocalReplicated, wait_timeout_ms: int = 500) -> dict[str, str]:
    """The RANKSTREAM_* variables that make `rankstream serve` write through the Sentinels and wait for the replica."""
    return {
        "RANKSTREAM_REDIS_SENTINELS": replicated.sentinel_list,
        "RANKSTREAM_REDIS_SENTINEL_MASTER": replicated.master_name,
        "RANKSTREAM_REDIS_WAIT_REPLICAS": "1",
        "RANKSTREAM_REDIS_WAIT_TIMEOUT_MS": str(wait_timeout_ms),
    }


def fail_over(replicated: LocalReplicated, how: Failover, timeout: float = 60.0) -> tuple[int, int]:
    """Move the primary to the replica and wait until the set is whole again; (old, new) primary ports.

    "sentinel": SENTINEL FAILOVER, with the old primary still up and taking writes from the clients still
    connected to it until it is made a replica of the new one (which the test does as soon as every
    Sentinel names the new primary; Sentinel itself does it some seconds later).
    "kill": kill -9 the primary; the Sentinels find it down and promote the replica; the old primary is
    then started again, empty, as a replica of the new one.
    """
    old = redis_local.wait_whole(replicated, timeout)
    (new,) = set(replicated.nodes) - {old}
    if how == "kill":
        proc = replicated.nodes[old]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_named(replicated, new, timeout)
        redis_local.restart_node(replicated, old, replica_of=new)
    else:
        _force_failover(replicated, timeout)
        _wait_named(replicated, new, timeout)
        with redis.Redis(host="127.0.0.1", port=old, socket_timeout=5) as node:
            node.replicaof("127.0.0.1", new)
    redis_local.wait_whole(replicated, timeout)
    return old, new


def _force_failover(replicated: LocalReplicated, timeout: float) -> None:
    """SENTINEL FAILOVER, asked again while the Sentinel has no replica it trusts yet or is busy."""
    port = next(iter(replicated.sentinels))
    deadline = time.monotonic() + timeout
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True) as sentinel:
        while True:
            try:
                sentinel.sentinel_failover(replicated.master_name)
                return
            except redis.ResponseError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"SENTINEL FAILOVER refused for {timeout:.0f}s: {exc}") from exc
                time.sleep(0.2)


def _wait_named(replicated: LocalReplicated, port: int, timeout: float) -> None:
    """Until every Sentinel names the node on `port` as the primary and that node says it is one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis_local.named_primary(replicated) == port:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True) as node:
                    if node.info("replication")["role"] == "master":
                        return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the Sentinels did not name {port} the primary within {timeout:.0f}s")
        time.sleep(0.1)


class ReplicatedWatch(Watch):
    """Polls every user's stored offset with reads a replica acknowledged, and records any that went back.

    A read of the primary alone can see a write that a failover then takes back (WAIT does not stop
    that); what a replica acknowledged is what the promoted replica holds. The reads are the scorer's
    own (`Store.read_states` with `wait_replicas`); a poll the replica did not acknowledge is not counted.
    """

    def __init__(self, store: Store, users: int) -> None:
        super().__init__(store, users)
        self.unacknowledged = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                states, _ = await self.store.read_states(self.users)
            except StoreError:
                self.unacknowledged += 1
            else:
                for user, state in states.items():
                    if state.offset is not None:
                        self.note(user, state.offset)
                self.polls += 1
            await asyncio.sleep(0.1)
