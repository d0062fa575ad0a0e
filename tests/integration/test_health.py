"""Probes on the real services: /readyz follows Redis going away and coming back; /healthz stays up."""

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest
import redis.asyncio as aioredis

from rankstream.deploy import stack as local_stack
from rankstream.deploy.kafka_local import create_topics

from .faults import assert_running, scorer_env, spawn_scorer, stop_gracefully

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def until(port: int, path: str, status: int, limit_s: float) -> float:
    """Seconds until `path` answers `status`; fails the test past `limit_s`."""
    t0 = time.monotonic()
    while True:
        code, body = await asyncio.to_thread(get, port, path)
        if code == status:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < limit_s, f"{path} still {code} {body!r} after {limit_s}s"
        await asyncio.sleep(0.2)


async def test_readiness_follows_redis_and_liveness_holds(stack, store, tiny_model, topic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    port = free_port()
    env = scorer_env(stack, topic, tiny_model, RANKSTREAM_METRICS_PORT=str(port))
    scorer = spawn_scorer(env, tmp_path / "scorer.log")
    try:
        await until(port, "/readyz", 200, limit_s=60)
        code, metrics = await asyncio.to_thread(get, port, "/metrics")
        assert code == 200 and "rankstream_events_total" in metrics
        assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404

        admin = aioredis.from_url(stack.redis_url)
        await admin.shutdown(save=True)
        await admin.aclose()
        down = await until(port, "/readyz", 503, limit_s=5)
        assert "Redis" in (await asyncio.to_thread(get, port, "/readyz"))[1]
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200  # live, not ready
        assert_running(scorer)

        await asyncio.to_thread(local_stack.start_redis, stack.state_dir)
        up = await until(port, "/readyz", 200, limit_s=5)
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        print(f"readyz: 503 after {down:.1f}s without Redis, 200 again {up:.1f}s after it came back")
    finally:
        assert stop_gracefully(scorer) == 0
