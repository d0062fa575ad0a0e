"""The local stack: a real Kafka broker (KRaft) and a real redis-server, owned by one state directory.

`up` starts what is not running and returns where to connect; `down` stops only the processes it
recorded in `<state_dir>/stack.json` (pid plus kernel start time, so a recycled pid is never killed).
The services run in their own session and outlive the process that started them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.deploy import kafka_local, redis_local
from rankstream.deploy.errors import StackError
from rankstream.deploy.kafka_local import create_topics, ensure_kafka_jars
from rankstream.deploy.probe import answers, free_port, port_free
from rankstream.stream.errors import ConfigError

__all__ = [
    "LocalStack",
    "StackError",
    "StackInfo",
    "create_topics",
    "down",
    "ensure_kafka_jars",
    "restart_kafka",
    "start_redis",
    "status",
    "stop_redis",
    "up",
]

log = logging.getLogger(__name__)

KAFKA_READY_S = 60.0
REDIS_READY_S = 10.0
STOP_GRACE_S = {"kafka": 30.0, "redis": 10.0}


@dataclass(frozen=True)
class StackInfo:
    bootstrap: str
    redis_url: str
    state_dir: Path
    kafka_pid: int | None
    redis_pid: int | None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _start_time(pid: int) -> int | None:
    """The kernel start time of a process that still holds its files (sockets), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may contain spaces
    # A killed JVM's main thread turns zombie before its other threads have exited and closed the
    # listening sockets: only a zombie with no threads left is gone.
    return None if fields[0] in ("Z", "X") and threads <= 1 else int(fields[19])


def _alive(pid: int | None, started: int | None) -> bool:
    return pid is not None and _start_time(pid) == started


def _spawn(argv: list[str], out: Path) -> tuple[int, int]:
    """Start argv detached (own session, reparented to init, stdout+stderr appended to out)."""
    # A shell that backgrounds the server and exits: the server is never our child, so stopping it
    # leaves no zombie in this process and no still-running Popen object behind.
    script = 'out=$1; shift; "$@" >>"$out" 2>&1 </dev/null & echo $!'
    command = ["sh", "-c", script, "sh", str(out), *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=out.parent, start_new_session=True)
    pid = int(done.stdout)
    started = _start_time(pid)
    if started is None:
        raise StackError(f"{argv[0]} exited at once; see {out}")
    return pid, started


def _check_service(name: str) -> None:
    if name not in STOP_GRACE_S:
        raise ConfigError(f"service must be 'kafka' or 'redis', not {name!r}")


class LocalStack:
    """Starts, checks and stops the Kafka and Redis processes recorded in one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._file = self.state_dir / "stack.json"

    def up(self, *, kafka_port: int | None = None, redis_port: int | None = None) -> StackInfo:
        """Start whatever is not running (reusing formatted storage and recorded ports); idempotent."""
        with self._lock():
            state = self._load()
            self._ensure(state, "kafka", kafka_port)
            self._ensure(state, "redis", redis_port)
            return self._info(state)

    def down(self) -> None:
        """Stop both services (TERM, then KILL after a grace period); ports and storage stay recorded."""
        if not self._file.exists():
            return
        with self._lock():
            state = self._load()
            for name in ("redis", "kafka"):
                self._stop(state, name, kill=False)

    def status(self) -> StackInfo | None:
        """Where to connect, with the pid of each service that is alive and listening; None if neither is."""
        state = self._load()
        info = self._info(state)
        return info if info.kafka_pid or info.redis_pid else None

    def stop(self, service: str, *, kill: bool = False) -> None:
        """Stop "kafka" or "redis"; kill=True sends SIGKILL at once (a crash, for fault tests)."""
        with self._lock():
            self._stop(self._load(), service, kill=kill)

    def start(self, service: str) -> StackInfo:
        """Start "kafka" or "redis" again on its recorded port."""
        with self._lock():
            state = self._load()
            self._ensure(state, service, None)
            return self._info(state)

    # -- internals; callers hold the state-dir lock -------------------------------------------------

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return _locked(self.state_dir / ".lock")

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._file.read_text()))
        except FileNotFoundError:
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._file)  # atomic, so a concurrent status() never reads half a file

    def _running(self, state: dict[str, Any], name: str) -> bool:
        entry = state.get(name) or {}
        return _alive(entry.get("pid"), entry.get("started")) and answers(entry["port"])

    def _info(self, state: dict[str, Any]) -> StackInfo:
        kafka, redis = state.get("kafka") or {}, state.get("redis") or {}
        return StackInfo(
            bootstrap=f"127.0.0.1:{kafka['port']}" if kafka else "",
            redis_url=redis_local.url(redis["port"]) if redis else "",
            state_dir=self.state_dir,
            kafka_pid=kafka["pid"] if self._running(state, "kafka") else None,
            redis_pid=redis["pid"] if self._running(state, "redis") else None,
        )

    @staticmethod
    def _pick_port(wanted: int | None, recorded: int | None) -> int:
        if wanted is not None:
            if not port_free(wanted):
                raise StackError(f"port {wanted} is in use; pick another or pass none for a free one")
            return wanted
        if recorded is not None:
            # Clients hold this address: wait out a previous server's last moments before giving it up.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if port_free(recorded):
                    return recorded
                time.sleep(0.2)
            log.warning("recorded port %s is taken by another program; using a new one", recorded)
        return free_port()

    def _ensure(self, state: dict[str, Any], name: str, port: int | None) -> None:
        _check_service(name)
        entry = state.setdefault(name, {})
        if self._running(state, name):
            if port is not None and port != entry["port"]:
                raise StackError(f"{name} already runs on port {entry['port']} in {self.state_dir}")
            return
        self._stop(state, name, kill=True)  # a recorded process that is alive but not listening is hung
        entry["port"] = self._pick_port(port, entry.get("port"))
        if name == "kafka":
            entry["controller_port"] = self._pick_port(None, entry.get("controller_port"))
            argv = self._kafka_argv(state, entry)
        else:
            argv = redis_local.server_argv(entry["port"], self.state_dir / "redis")
        out = self.state_dir / name / f"{name}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        started_at = time.monotonic()
        pid, started = _spawn(argv, out)
        entry.update(pid=pid, started=started)
        self._save(state)  # recorded before waiting, so a failed start can still be stopped
        alive = functools.partial(_alive, pid, started)
        try:
            if name == "kafka":
                kafka_local.wait_ready(f"127.0.0.1:{entry['port']}", KAFKA_READY_S, alive)
            else:
                redis_local.wait_ready(redis_local.url(entry["port"]), REDIS_READY_S, alive)
        except BaseException:
            self._stop(state, name, kill=True)
            raise
        took = time.monotonic() - started_at
        log.info("%s up on port %s (pid %s) in %.1fs", name, entry["port"], entry["pid"], took)

    def _kafka_argv(self, state: dict[str, Any], entry: dict[str, Any]) -> list[str]:
        libs = ensure_kafka_jars()
        kafka_dir = self.state_dir / "kafka"
        config = kafka_local.write_config(kafka_dir, entry["port"], entry["controller_port"])
        if not kafka_local.is_formatted(kafka_dir):
            state["cluster_id"] = state.get("cluster_id") or kafka_local.new_cluster_id()
            kafka_local.format_storage(libs, kafka_dir, config, state["cluster_id"])
        return kafka_local.broker_argv(libs, kafka_dir, config)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _stop(self, state: dict[str, Any], name: str, *, kill: bool) -> None:
        _check_service(name)
        entry = state.get(name)
        if not entry or entry.get("pid") is None:
            return
        pid, started = entry["pid"], entry["started"]
        if _alive(pid, started):
            grace = 0.0 if kill else STOP_GRACE_S[name]
            self._signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(pid, started):
                if time.monotonic() > deadline + 10:
                    raise StackError(f"{name} (pid {pid}) survived SIGKILL")
                if grace and time.monotonic() > deadline:
                    log.warning("%s (pid %s) ignored SIGTERM for %.0fs; killing it", name, pid, grace)
                    self._signal(pid, signal.SIGKILL)
                    grace = 0.0
                time.sleep(0.1)
            log.info("%s stopped (pid %s, %s)", name, pid, "SIGKILL" if kill else "SIGTERM")
        entry["pid"] = entry["started"] = None
        self._save(state)


def up(state_dir: Path, *, kafka_port: int | None = None, redis_port: int | None = None) -> StackInfo:
    """Start the local stack in state_dir (free loopback ports when none are given)."""
    return LocalStack(state_dir).up(kafka_port=kafka_port, redis_port=redis_port)


def down(state_dir: Path) -> None:
    """Stop what `up` started in state_dir."""
    LocalStack(state_dir).down()


def status(state_dir: Path) -> StackInfo | None:
    """The running stack in state_dir, or None."""
    return LocalStack(state_dir).status()


def restart_kafka(state_dir: Path, *, kill: bool = False) -> StackInfo:
    """Stop the broker (SIGKILL when kill=True) and start it again on the same ports and storage."""
    stack = LocalStack(state_dir)
    stack.stop("kafka", kill=kill)
    return stack.start("kafka")


def stop_redis(state_dir: Path) -> None:
    """Stop redis-server (its data is gone: it runs without persistence)."""
    LocalStack(state_dir).stop("redis")


def start_redis(state_dir: Path) -> StackInfo:
    """Start redis-server again on its recorded port."""
    return LocalStack(state_dir).start("redis")
