"""One throwaway redis-server: loopback only, no persistence."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import redis

from rankstream.stream.errors import StackError

log = logging.getLogger(__name__)


def server_argv(port: int, data_dir: Path) -> list[str]:
    """The redis-server command line; StackError naming the package when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: install it with `apt-get install -y redis-server`")
    data_dir.mkdir(parents=True, exist_ok=True)
    # --save '' and --appendonly no: a dev cache; a restart starts empty, as after a Redis failover.
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
    ]  # fmt: skip


def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def wait_ready(redis_url: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Block until PING answers; StackError if the server dies or the timeout passes."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError as exc:
                if not alive():
                    raise StackError("redis-server exited; see redis/redis.out in the state dir") from exc
                if time.monotonic() > deadline:
                    raise StackError(f"Redis on {redis_url} not ready after {timeout:.0f}s") from exc
                time.sleep(0.1)
    finally:
        client.close()
