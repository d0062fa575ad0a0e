"""Faults for `bench chaos`, each injected into real processes and followed by its recovery.

- kill -9 of a scorer replica, then a new `rankstream serve` in its place, ready (`Fleet.kill9`);
- a Redis failover: kill -9 of the primary (the Sentinels promote the replica; the old primary comes
  back empty as a replica) or SENTINEL FAILOVER, alternately (`redis_local.fail_over`);
- a Redis stall: the primary paused (SIGSTOP) and resumed; the Sentinels' down-after is raised for
  that time, so the stall stays a stall rather than a failover, which is a fault of its own (`stall`);
- corrupt artifacts published through the registry (`corrupt_copy`; the run checks every replica
  refuses them). The broker restart is `rankstream.deploy.stack.restart_kafka`.
"""

import asyncio
import json
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from typing import Literal

import redis

from rankstream.bench.replicas import Replica, free_port, replica_env, spawn, stop_all, wait_ready
from rankstream.deploy import redis_local
from rankstream.deploy.redis_local import SENTINEL_DOWN_AFTER_MS, LocalReplicated
from rankstream.stream.artifact import MANIFEST, sha256_file
from rankstream.stream.errors import ArtifactError, RankstreamError
from rankstream.stream.registry import Registry

Corruption = Literal["bad_checksum", "truncated_model", "lying_reference"]
RESIGNED: tuple[Corruption, ...] = ("truncated_model", "lying_reference")  # checksums that match the damage
_TIMEOUT_S = 60.0
_REFUSE_WAIT_S = 120.0


class Fleet:
    """Scorer replicas as `rankstream serve` processes; a replica killed is replaced by a new incarnation
    (`chaos-<slot>.<n>`, its own log) so every log survives for the post-mortem."""

    def __init__(self, env: dict[str, str], size: int, folder: Path) -> None:
        self._env = env
        self._folder = folder
        self._incarnations = [0] * size
        self.replicas = [self._spawn(i) for i in range(size)]

    def _spawn(self, slot: int) -> Replica:
        n = self._incarnations[slot]
        name = f"chaos-{slot}" + (f".{n}" if n else "")
        return spawn(name, replica_env(self._env, free_port()), self._folder)

    async def kill9(self, slot: int) -> str:
        """SIGKILL the replica in `slot` and wait until its replacement is ready."""
        old = self.replicas[slot]
        old.check_running()
        old.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(old.proc.wait, _TIMEOUT_S)
        self._incarnations[slot] += 1
        new = self.replicas[slot] = self._spawn(slot)
        await wait_ready([new])
        return f"{old.name} killed, {new.name} ready"

    def check(self) -> None:
        """Raise with its log's end if a replica exited that nobody killed."""
        for r in self.replicas:
            r.check_running()

    def stop(self) -> None:
        stop_all(self.replicas)


def refused(replica: Replica, version: str) -> bool:
    """Whether the replica's /metrics counts `version` as refused (rankstream_models_refused_total)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return False
    prefix = f'rankstream_models_refused_total{{version="{version}"}} '
    return any(line.startswith(prefix) and float(line[len(prefix) :]) >= 1 for line in text.splitlines())


def corrupt_copy(artifact: Path, into: Path, version: str, how: Corruption) -> Path:
    """A copy of `artifact` named `version`, damaged in one way:

    - bad_checksum: bytes of model.onnx flipped, the manifest left as it was (the publisher must refuse it);
    - truncated_model: model.onnx cut in half, and a manifest that vouches for the cut file;
    - lying_reference: whole files, but reference scores the graph does not give (the smoke test fails).
    """
    target = into / version
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(artifact, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    model = target / manifest["input_spec"].get("model_file", "model.onnx")
    data = bytearray(model.read_bytes())
    if how == "bad_checksum":
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        model.write_bytes(bytes(data))
    elif how == "truncated_model":
        model.write_bytes(bytes(data[: len(data) // 2]))
        manifest["files"][model.relative_to(target).as_posix()] = sha256_file(model)
    else:
        manifest["reference"]["scores"] = [s + 1.0 for s in manifest["reference"]["scores"]]
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return target


async def corrupt_publish(
    registry: Registry, model: Path, good: str, into: Path, replicas: list[Replica], n: int
) -> tuple[str, int]:
    """Publish corrupt copies of `model` while the registry serves `good`: one with a bad checksum, which the
    publish must refuse, then each re-signed kind in turn, activated: wait until every replica refused it
    or serves it, then promote `good` again. Returns what happened, and how many times a replica served
    a corrupt version."""
    checksum = corrupt_copy(model, into, f"{good}-bad-checksum-{n}", "bad_checksum")
    try:
        await registry.publish(checksum)
    except ArtifactError:
        pass
    else:
        raise RankstreamError(f"the registry published {checksum}, whose model.onnx does not match its sha256")
    outcomes, served_total = ["a bad checksum refused at publish"], 0
    for how in RESIGNED:
        version, _ = await registry.publish(corrupt_copy(model, into, f"{good}-{how}-{n}", how))
        deadline = time.monotonic() + _REFUSE_WAIT_S
        while True:
            serving = await registry.serving()
            served = [r for r in replicas if serving.get(r.name, {}).get("version") == version]
            done = [r for r in replicas if await asyncio.to_thread(refused, r, version)]
            if len(served) + len(done) >= len(replicas) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await registry.promote(good)
        served_total += len(served)
        outcomes.append(f"{how} refused by {len(done)} of {len(replicas)} replicas")
    return "; ".join(outcomes), served_total


def stall(replicated: LocalReplicated, seconds: float, timeout: float = _TIMEOUT_S) -> int:
    """Pause the primary for `seconds` (SIGSTOP, then SIGCONT); return its port."""
    primary = redis_local.wait_whole(replicated, timeout)
    proc = replicated.nodes[primary]
    _set_down_after(replicated, int((seconds + timeout) * 1000))
    proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGCONT)
        _set_down_after(replicated, SENTINEL_DOWN_AFTER_MS)
    redis_local.wait_whole(replicated, timeout)
    return primary


def _set_down_after(replicated: LocalReplicated, ms: int) -> None:
    for port in replicated.sentinels:
        with _node(port) as sentinel:
            sentinel.sentinel_set(replicated.master_name, "down-after-milliseconds", ms)


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)
