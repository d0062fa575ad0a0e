"""Throwaway Redis on loopback, no persistence: one redis-server (the stack), or a small Redis Cluster (tests)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from rankstream.deploy.errors import StackError
from rankstream.deploy.probe import free_port
from rankstream.deploy.probe import wait_ready as probe_ready

log = logging.getLogger(__name__)


def server_argv(port: int, data_dir: Path, config: Path | None = None) -> list[str]:
    """The redis-server command line; StackError naming the package when it is not installed.

    `config` is a redis.conf read first (ACL users, TLS): secrets stay in a file, off the process list.
    Pass port 0 with a config that sets `tls-port` for a TLS-only server.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: install it with `apt-get install -y redis-server`")
    data_dir.mkdir(parents=True, exist_ok=True)
    # --save '' and --appendonly no: a dev cache; a restart starts empty, as after a Redis failover.
    options = {"--port": port, "--bind": "127.0.0.1", "--save": "", "--appendonly": "no", "--dir": data_dir}
    return [binary, *([str(config)] if config else []), *_flags(options | {"--daemonize": "no"})]


def _flags(options: dict[str, object]) -> list[str]:
    """`{"--port": 6379}` -> `["--port", "6379"]`: redis-server's command-line form of its options."""
    return [str(part) for pair in options.items() for part in pair]


def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def wait_ready(redis_url: str, timeout: float, alive: Callable[[], bool], **client_options: Any) -> None:
    """Block until PING answers; StackError if the server dies or the timeout passes.

    `client_options` go to redis-py (username, password, ssl_ca_certs for a secured server).
    """
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1, **client_options)
    try:
        probe_ready(
            client.ping,
            (redis.ConnectionError,),
            alive=alive,
            timeout=timeout,
            interval=0.1,
            exited="redis-server exited; see redis/redis.out in the state dir",
            late=f"Redis on {redis_url} not ready after {timeout:.0f}s; see redis/redis.out in the state dir",
        )
    finally:
        client.close()


@dataclass(frozen=True)
class LocalCluster:
    """A throwaway Redis Cluster of masters on loopback, started by `start_cluster`."""

    ports: tuple[int, ...]
    processes: tuple[subprocess.Popen[bytes], ...]
    data_dir: Path

    @property
    def url(self) -> str:
        """A URL naming one node; a cluster client discovers the others from it."""
        return url(self.ports[0])


def start_cluster(data_dir: Path, masters: int = 3, timeout: float = 30.0) -> LocalCluster:
    """Start `masters` cluster-enabled redis-servers on free ports, join them, wait for cluster_state:ok.

    No replicas and no persistence (a dev cache, like the single server). Stop it with `stop_cluster`.
    """
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError("redis-cli not found: install it with `apt-get install -y redis-tools`")
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for _ in range(masters):
            # cluster-port: the bus port is picked free too (the default, port + 10000, may be taken).
            port, bus_port = free_port(), free_port()
            node_dir = data_dir / f"node-{port}"
            cluster_flags = {
                "--cluster-enabled": "yes",
                "--cluster-port": bus_port,
                "--cluster-config-file": node_dir / "nodes.conf",
                "--cluster-node-timeout": 5000,
            }
            argv = server_argv(port, node_dir) + _flags(cluster_flags)
            with (node_dir / "redis.out").open("ab") as out:
                processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=node_dir))
            ports.append(port)
        cluster = LocalCluster(tuple(ports), tuple(processes), data_dir)
        for port, proc in zip(ports, processes, strict=True):
            wait_ready(url(port), timeout, lambda p=proc: p.poll() is None)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        _wait_cluster_ok(ports, timeout)
    except BaseException:
        _terminate(processes)
        raise
    log.info("redis cluster up on ports %s", ports)
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    """Stop every node of a cluster started by `start_cluster` (its data is gone)."""
    _terminate(list(cluster.processes))


def _wait_cluster_ok(ports: list[int], timeout: float) -> None:
    """Block until every node reports cluster_state:ok and knows all the others."""
    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
        try:
            while True:
                info = client.execute_command("CLUSTER INFO")
                text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
                if "cluster_state:ok" in text and f"cluster_known_nodes:{len(ports)}" in text:
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"Redis Cluster node {port} not ok after {timeout:.0f}s: {text}")
                time.sleep(0.1)
        finally:
            client.close()


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
