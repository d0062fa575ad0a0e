"""Tools for failover tests: settings through Sentinel, forced failovers, a watch on replicated state."""

import asyncio
from typing import Any

from rankstream.deploy.redis_local import LocalReplicated
from rankstream.stream.errors import StoreError
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

from .faults import Watch


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
