"""The one place an async Redis client is made: a single server, the primary named by Sentinels, or a
Redis Cluster.

Everything rankstream does works on all three; Sentinel's client is a single-server client whose
connections go to whichever server the Sentinels name as primary now. The differences a caller sees on a
cluster:
- a pipeline with transaction=False is split by node (one round trip per node, sent in parallel);
- a MULTI pipeline must touch one slot only (the registry's `{model}` keys share a hash tag);
- EVALSHA cannot be pipelined (redis-py blocks it), so pipelined scripts go as EVAL (see Store);
- FLUSHDB, SCRIPT LOAD and similar go to every primary; PUBLISH reaches subscribers on every node.
"""

import ssl
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError

from rankstream.stream.errors import ConfigError, StoreError
from rankstream.stream.settings import Settings

RedisClient: TypeAlias = Redis | RedisCluster


def connect(url: str, *, cluster: bool = False, **options: Any) -> RedisClient:
    """A decoding async client for `url`; with cluster=True the URL names any one node of the cluster.

    `options` go to redis-py (username, password, ssl_ca_certs, socket_timeout, …): see
    Settings.redis_client_options. Nothing connects until the first command.
    """
    if cluster:
        return RedisCluster.from_url(url, decode_responses=True, **options)
    return Redis.from_url(url, decode_responses=True, **options)


def connect_from_settings(settings: Settings) -> RedisClient:
    """A client for the settings' Redis: its URL (or Sentinels), Cluster mode, credentials, TLS and timeouts."""
    if settings.redis_sentinels:
        # The URL still gives the database number (and credentials, if it carries any).
        from_url = {k: v for k, v in parse_url(settings.redis_url).items() if k in ("db", "username", "password")}
        options = from_url | settings.redis_client_options()
        return connect_sentinel(settings.sentinel_addresses(), settings.redis_sentinel_master, **options)
    return connect(settings.redis_url, cluster=settings.redis_cluster, **settings.redis_client_options())


class SentinelPrimary(Redis):
    """A client of the primary that Sentinels name, made by `connect_sentinel`.

    Each new connection asks the Sentinels where the primary is. A connection to a server that was
    demoted answers writes with READONLY, which closes it; the next attempt reconnects to the new primary.
    Closing this client also closes its connections to the Sentinels.
    """

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        try:
            await super().aclose(close_connection_pool)
        finally:
            if isinstance(pool, SentinelConnectionPool):
                await pool.sentinel_manager.aclose()


def connect_sentinel(sentinels: Sequence[tuple[str, int]], master: str, **options: Any) -> SentinelPrimary:
    """A decoding async client of the primary that `sentinels` name for `master`, following its failovers.

    `options` go to the connections to the primary (db, username, password, socket_timeout, …); the
    Sentinels get the socket timeouts only (no AUTH, no TLS). Nothing connects until the first command.
    """
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    manager = Sentinel(list(sentinels), sentinel_kwargs=timeouts)
    client: SentinelPrimary = manager.master_for(master, redis_class=SentinelPrimary, decode_responses=True, **options)
    return client


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


# What a Redis failure can raise. A cluster none of whose nodes answers raises RedisClusterException
# ("Redis Cluster cannot be connected"), which is not a RedisError: catch both, so a cluster outage is
# retried like a single server's.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in exc's chain: redis-py wraps a TLS failure in a ConnectionError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def check_redis(client: RedisClient) -> None:
    """PING once at start. A refused login or an untrusted certificate is a ConfigError naming what to fix:
    retrying cannot cure either. Anything else is a StoreError, as for any Redis failure."""
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        if (refused := _cause(exc, AuthenticationError)) is not None:
            raise ConfigError(
                f"Redis refused the login ({str(refused).rstrip('.')}): "
                "check RANKSTREAM_REDIS_USERNAME and RANKSTREAM_REDIS_PASSWORD"
            ) from exc
        if isinstance(untrusted := _cause(exc, ssl.SSLCertVerificationError), ssl.SSLCertVerificationError):
            raise ConfigError(
                f"Redis's TLS certificate is not trusted ({untrusted.verify_message}): set RANKSTREAM_REDIS_SSL_CA "
                "to the CA that signed it"
            ) from exc
        raise StoreError(f"Redis did not answer: {exc}") from exc
