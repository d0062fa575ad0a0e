"""Throwaway Redis on loopback, no persistence: one redis-server (the stack), or a small Redis Cluster (tests)."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


# Replicated Redis: a primary, a replica and Sentinels (tests/integration/test_failover.py).

# A demoted or restarted node resyncs in full; without these it would wait 5 s for more replicas first.
_SYNC_NOW = {"--repl-diskless-sync": "yes", "--repl-diskless-sync-delay": 0}
SENTINEL_DOWN_AFTER_MS = 2000  # how long a primary stays unanswered before a Sentinel calls it down


Failover = Literal["kill", "sentinel"]  # how `fail_over` moves the primary


@dataclass
class LocalReplicated:
    """A primary, one replica and the Sentinels watching them on loopback, started by `start_replicated`.

    Which node is the primary changes with every failover (`named_primary`); `nodes` maps each data
    node's port to its process, replaced when `restart_node` starts a node again.
    """

    master_name: str
    nodes: dict[int, subprocess.Popen[bytes]]
    sentinels: dict[int, subprocess.Popen[bytes]]
    data_dir: Path

    @property
    def sentinel_list(self) -> str:
        """The Sentinels as RANKSTREAM_REDIS_SENTINELS lists them."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels)


def start_replicated(
    data_dir: Path, *, sentinels: int = 3, master_name: str = "mymaster", timeout: float = 30.0
) -> LocalReplicated:
    """Start a primary, a replica of it and `sentinels` Sentinels (quorum: a majority) on free ports, and
    wait until every Sentinel sees the replica and the other Sentinels. Stop it with `stop_replicated`.

    No persistence, as for the single server: a node that is killed comes back empty and resyncs.
    """
    primary, replica = free_port(), free_port()
    replicated = LocalReplicated(master_name, {}, {}, data_dir)
    try:
        replicated.nodes[primary] = start_node(data_dir, primary)
        replicated.nodes[replica] = start_node(data_dir, replica, replica_of=primary)
        for port, proc in replicated.nodes.items():
            wait_ready(url(port), timeout, lambda p=proc: p.poll() is None)
        for _ in range(sentinels):
            port = free_port()
            replicated.sentinels[port] = _start_sentinel(data_dir, port, master_name, primary, sentinels // 2 + 1)
        for port, proc in replicated.sentinels.items():
            wait_ready(url(port), timeout, lambda p=proc: p.poll() is None)
        wait_whole(replicated, timeout)
    except BaseException:
        stop_replicated(replicated)
        raise
    log.info("replicated redis up: nodes %s, sentinels %s", list(replicated.nodes), list(replicated.sentinels))
    return replicated


def start_node(data_dir: Path, port: int, replica_of: int | None = None) -> subprocess.Popen[bytes]:
    """One data node of a replicated set on `port`; a replica of the node on `replica_of` if given."""
    node_dir = data_dir / f"node-{port}"
    argv = server_argv(port, node_dir) + _flags(_SYNC_NOW)
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    with (node_dir / "redis.out").open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=node_dir)


def restart_node(replicated: LocalReplicated, port: int, replica_of: int, timeout: float = 30.0) -> None:
    """Start the (stopped) node on `port` again, empty, as a replica of the node on `replica_of`."""
    proc = start_node(replicated.data_dir, port, replica_of=replica_of)
    replicated.nodes[port] = proc
    wait_ready(url(port), timeout, lambda: proc.poll() is None)


def _start_sentinel(data_dir: Path, port: int, master_name: str, primary: int, quorum: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: install it with `apt-get install -y redis-server`")
    sentinel_dir = data_dir / f"sentinel-{port}"
    sentinel_dir.mkdir(parents=True, exist_ok=True)
    # Sentinel rewrites its config file as it learns the replica, the other Sentinels and each failover.
    config = sentinel_dir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {sentinel_dir}\n"
        f"sentinel monitor {master_name} 127.0.0.1 {primary} {quorum}\n"
        f"sentinel down-after-milliseconds {master_name} {SENTINEL_DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {master_name} 5000\n"
    )
    with (sentinel_dir / "sentinel.out").open("ab") as out:
        return subprocess.Popen(
            [binary, str(config), "--sentinel"], stdout=out, stderr=subprocess.STDOUT, cwd=sentinel_dir
        )


def named_primary(replicated: LocalReplicated) -> int | None:
    """The port of the primary the Sentinels name, if they all name the same one (None otherwise)."""
    named = set()
    for port in replicated.sentinels:
        with _client(port) as sentinel:
            _, primary = sentinel.sentinel_get_master_addr_by_name(replicated.master_name)
            named.add(int(primary))
    return named.pop() if len(named) == 1 else None


def wait_whole(replicated: LocalReplicated, timeout: float) -> int:
    """Block until the set can fail over again; the primary's port. StackError after `timeout` saying what
    is missing.

    Whole: every Sentinel names the same primary, sees the other Sentinels and sees the other node as a
    replica of that primary with its link up; the primary reports that replica online.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            primary, missing = _whole(replicated)
        except redis.RedisError as exc:
            primary, missing = None, str(exc)
        if primary is not None:
            return primary
        if time.monotonic() > deadline:
            raise StackError(f"replicated Redis not whole after {timeout:.0f}s: {missing}")
        time.sleep(0.1)


def _whole(replicated: LocalReplicated) -> tuple[int | None, str]:
    """(the primary's port, "") when the set is whole (see `wait_whole`), else (None, what is missing)."""
    primary = named_primary(replicated)
    if primary is None:
        return None, "the Sentinels name different primaries"
    (replica,) = set(replicated.nodes) - {primary}
    for port in replicated.sentinels:
        with _client(port) as sentinel:
            master = sentinel.sentinel_master(replicated.master_name)
            if master["num-other-sentinels"] < len(replicated.sentinels) - 1:
                return None, f"Sentinel {port} knows {master['num-other-sentinels']} other Sentinels"
            if master["is_sdown"] or master["is_odown"] or "failover_in_progress" in master["flags"]:
                return None, f"Sentinel {port}: primary flags {master['flags']}"
            seen = {r["port"]: r for r in sentinel.sentinel_slaves(replicated.master_name)}
            r = seen.get(replica)
            if r is None or r["is_sdown"] or r["is_disconnected"] or r.get("master-link-status") != "ok":
                return None, f"Sentinel {port} does not see replica {replica} up: {r}"
            if r.get("master-port") != primary:
                return None, f"Sentinel {port} sees replica {replica} following {r.get('master-port')}"
    with _client(primary) as node:
        info = node.info("replication")
    if info.get("role") != "master" or info.get("slave0", {}).get("state") != "online":
        return None, f"primary {primary}: role {info.get('role')}, replica {info.get('slave0')}"
    return primary, ""


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def fail_over(replicated: LocalReplicated, how: Failover, timeout: float = 60.0) -> tuple[int, int]:
    """Move the primary to the replica and wait until the set is whole again; (old, new) primary ports.

    "sentinel": SENTINEL FAILOVER, with the old primary still up and taking writes from the clients still
    connected to it until it is made a replica of the new one (done as soon as every Sentinel names the
    new primary; Sentinel itself does it some seconds later).
    "kill": kill -9 the primary; the Sentinels find it down and promote the replica; the old primary is
    then started again, empty, as a replica of the new one.
    """
    old = wait_whole(replicated, timeout)
    (new,) = set(replicated.nodes) - {old}
    if how == "kill":
        proc = replicated.nodes[old]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=timeout)
        _wait_named(replicated, new, timeout)
        restart_node(replicated, old, replica_of=new)
    else:
        _sentinel_failover(replicated, timeout)
        _wait_named(replicated, new, timeout)
        # Sentinel demotes the old primary itself some seconds later; until then it takes writes from
        # clients still connected to it, so it is demoted at once.
        with _client(old) as node:
            node.replicaof("127.0.0.1", new)
    wait_whole(replicated, timeout)
    return old, new


def _sentinel_failover(replicated: LocalReplicated, timeout: float) -> None:
    """SENTINEL FAILOVER, asked again while the Sentinel has no replica it trusts yet or is busy."""
    deadline = time.monotonic() + timeout
    with _client(next(iter(replicated.sentinels))) as sentinel:
        while True:
            try:
                sentinel.sentinel_failover(replicated.master_name)
                return
            except redis.ResponseError as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"SENTINEL FAILOVER refused for {timeout:.0f}s: {exc}") from exc
                time.sleep(0.2)


def _wait_named(replicated: LocalReplicated, port: int, timeout: float) -> None:
    """Until every Sentinel names the node on `port` as the primary and that node says it is one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if named_primary(replicated) == port:
                with _client(port) as node:
                    if node.info("replication")["role"] == "master":
                        return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"the Sentinels did not name {port} the primary within {timeout:.0f}s")
        time.sleep(0.1)


def stop_replicated(replicated: LocalReplicated) -> None:
    """Stop the Sentinels and both nodes of a set started by `start_replicated` (their data is gone)."""
    _terminate([*replicated.sentinels.values(), *replicated.nodes.values()])
