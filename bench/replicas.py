"""Scorer replicas as deployed: each a `rankstream serve` process with its own RANKSTREAM_* environment.

A replica is read from outside, as an operator reads one: `/readyz` on its metrics port, its RSS from
/proc, the served version from the registry's serving report, and the `Stats` line it prints on exit.
"""

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rankstream.stream.errors import RankstreamError
from rankstream.stream.recorder import Stats

_READY_WAIT_S = 180.0
_STOP_WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One `rankstream serve` process: its name in the registry, its metrics port, its output files."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    out_path: Path

    def check_running(self) -> None:
        """Raise with the end of the replica's log if it has exited."""
        if self.proc.poll() is not None:
            raise RankstreamError(f"replica {self.name} exited with {self.proc.returncode}; {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"its log ({self.log_path}) ends:\n" + "\n".join(text)

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def ready(self) -> bool:
        """Whether `/readyz` answers 200: model verified, partitions owned, Redis answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stats(self) -> Stats:
        """The totals the replica printed when it stopped (its last stdout line)."""
        lines = [ln for ln in self.out_path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise RankstreamError(f"replica {self.name} printed no stats; {self.log_tail()}")
        return Stats.from_json(lines[-1])


def spawn(name: str, env: dict[str, str], folder: Path, command: tuple[str, ...] = ("serve",)) -> Replica:
    """Start `python -m rankstream.cli <command>` (a scorer by default) with `env` (RANKSTREAM_METRICS_PORT
    must be set)."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path, out_path = folder / f"{name}.log", folder / f"{name}.out"
    with log_path.open("wb") as log, out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli", *command],
            env={**env, "RANKSTREAM_REPLICA": name},
            stdout=out,
            stderr=log,
        )
    return Replica(name, proc, int(env["RANKSTREAM_METRICS_PORT"]), log_path, out_path)


def replica_env(base: dict[str, str], port: int, **settings: object) -> dict[str, str]:
    """`base` (the bench's own environment) with RANKSTREAM_<NAME> for each setting and the metrics port."""
    env = {**base, "RANKSTREAM_METRICS_PORT": str(port)}
    env.update({f"RANKSTREAM_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def wait_ready(replicas: list[Replica]) -> None:
    """Until every replica is ready at once; raise if one exits or the wait runs out."""
    deadline = asyncio.get_running_loop().time() + _READY_WAIT_S
    while True:
        for r in replicas:
            r.check_running()
        states = await asyncio.gather(*(asyncio.to_thread(r.ready) for r in replicas))
        if all(states):
            return
        if asyncio.get_running_loop().time() > deadline:
            waiting = [r.name for r, ok in zip(replicas, states, strict=True) if not ok]
            raise RankstreamError(f"replicas {waiting} not ready within {_READY_WAIT_S:.0f}s; {replicas[0].log_tail()}")
        await asyncio.sleep(0.5)


def stop_all(replicas: list[Replica]) -> None:
    """SIGTERM every replica (each drains its batch and commits), then wait; kill one that hangs."""
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        try:
            r.proc.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
