"""The model registry: versioned artifacts under one shared root, and which version is active, in Redis.

Artifacts live at `<root>/<version>/` (a path every replica mounts). Redis holds the decisions (which
version is active, the activation log, the pin, what each replica serves) and announces each
activation, so they survive any replica and every replica sees the same ones. The key names are the
constants below; what each key holds is documented once, in docs/operations.md ("Model registry
and hot swap"). A replica also re-reads the active key on every poll, so a missed announcement
(pub/sub is fire-and-forget) only delays a swap.

The `{model}` hash tag keeps the keys in one Redis Cluster slot: an activation updates two in one
transaction.
"""

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankstream.stream.artifact import MANIFEST, Manifest, copy_artifact, load_manifest
from rankstream.stream.errors import ArtifactError, ConfigError, StoreError
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)

ACTIVE_KEY = "rs:{model}:active"
LOG_KEY = "rs:{model}:log"
PINNED_KEY = "rs:{model}:pinned"
SERVING_KEY = "rs:{model}:serving"
ANNOUNCE_CHANNEL = "rs:model:announce"
_LOG_MAX = 200


def list_versions(root: Path) -> list[str]:
    """Every version directory under `root`, oldest first by the manifest's build time.

    By time, not name: builds and recompressions name versions with different prefixes.
    """
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(f"*/{MANIFEST}"):
        if path.parent.name.startswith("."):
            continue
        try:
            created = str(json.loads(path.read_text()).get("created_at", ""))
        except (OSError, ValueError):
            created = ""  # unreadable: listed (and refused when used), sorted first
        found.append((created, path.parent.name))
    return [name for _, name in sorted(found)]


@dataclass(frozen=True)
class Activation:
    version: str
    reason: str  # publish | promote | rollback | pin | canary | canary-promote | canary-rollback | shadow
    at: str  # ISO time
    previous: str | None
    detail: dict[str, Any] | None = None  # a canary decision's figures (stream/canary.py)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None or k == "previous"})


class Registry:
    """Artifacts on disk plus the active pointer in Redis; used by `rankstream models`, publishers and scorers."""

    def __init__(self, root: Path, client: RedisClient) -> None:
        self.root = Path(root)
        self.client = client

    # -- artifacts on disk ---------------------------------------------------------------------------

    def versions(self) -> list[str]:
        return list_versions(self.root)

    def path(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ArtifactError(f"{version!r} is not a version name")
        directory = self.root / version
        if not (directory / MANIFEST).is_file():
            raise ArtifactError(f"version {version} is not in the registry at {self.root} (`rankstream models list`)")
        return directory

    def verify(self, version: str) -> Manifest:
        """The version's manifest, after every file's checksum was checked (ArtifactError if refused)."""
        return load_manifest(self.path(version))

    def add(self, artifact_dir: Path) -> str:
        """Copy a verified artifact into the registry under its manifest's version; return the version.

        The copy lands in a hidden directory first and is renamed into place, so a replica never sees
        a half-copied version.
        """
        manifest = load_manifest(artifact_dir)
        target = self.root / manifest.version
        if target.exists():
            if load_manifest(target).files != manifest.files:
                raise ArtifactError(f"version {manifest.version} already exists in {self.root} with other files")
            return manifest.version
        copy_artifact(artifact_dir, target)
        return manifest.version

    # -- decisions in Redis ---------------------------------------------------------------------------

    async def active(self) -> str | None:
        return await self.call("reading the active version", self.client.get(ACTIVE_KEY))

    async def pinned(self) -> str | None:
        return await self.call("reading the pin", self.client.get(PINNED_KEY))

    async def activations(self, limit: int = 50) -> list[Activation]:
        raw = await self.call("reading the activation log", self.client.lrange(LOG_KEY, 0, limit - 1))
        return [Activation(**json.loads(r)) for r in raw]

    async def activate(self, version: str, reason: str) -> Activation:
        """Make `version` the one every replica serves, after verifying it; announce it."""
        self.verify(version)
        previous = await self.active()
        record = Activation(version, reason, datetime.now(UTC).isoformat(timespec="seconds"), previous)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(ACTIVE_KEY, version)
            pipe.lpush(LOG_KEY, record.to_json())
            pipe.ltrim(LOG_KEY, 0, _LOG_MAX - 1)
            await self.call("activating a version", pipe.execute())
        await self.call("announcing a version", self.client.publish(ANNOUNCE_CHANNEL, version))
        log.info("active model %s -> %s (%s)", previous, version, reason)
        return record

    async def publish(self, artifact_dir: Path) -> tuple[str, bool]:
        """Add an artifact and activate it unless a version is pinned; (version, activated)."""
        version = self.add(artifact_dir)
        pinned = await self.pinned()
        if pinned is not None:
            log.warning("published %s but not activated: the registry is pinned to %s", version, pinned)
            return version, False
        await self.activate(version, "publish")
        return version, True

    async def promote(self, version: str) -> Activation:
        await self.refuse_if_pinned("promote")
        return await self.activate(version, "promote")

    async def rollback(self) -> Activation:
        """Activate the version that was active before the current one."""
        await self.refuse_if_pinned("roll back")
        current = await self.active()
        for record in await self.activations(_LOG_MAX):
            if record.version != current and record.version in self.versions():
                return await self.activate(record.version, "rollback")
        raise ConfigError(f"nothing to roll back to: no earlier active version than {current} is in the registry")

    async def pin(self, version: str) -> Activation:
        record = await self.activate(version, "pin")
        await self.call("pinning", self.client.set(PINNED_KEY, version))
        return record

    async def unpin(self) -> None:
        await self.call("unpinning", self.client.delete(PINNED_KEY))

    async def report_serving(self, replica: str, version: str, since: float) -> None:
        """A replica says what it serves (read by `models list` and the swap benchmark)."""
        value = json.dumps({"version": version, "since": since, "at": time.time()})
        await self.call("reporting the served version", self.client.hset(SERVING_KEY, replica, value))

    async def serving(self) -> dict[str, dict[str, Any]]:
        raw = await self.call("reading served versions", self.client.hgetall(SERVING_KEY))
        return {k: json.loads(v) for k, v in raw.items()}

    async def forget_replica(self, replica: str) -> None:
        await self.call("removing a replica", self.client.hdel(SERVING_KEY, replica))

    async def refuse_if_pinned(self, what: str) -> None:
        pinned = await self.pinned()
        if pinned is not None:
            raise ConfigError(f"cannot {what}: pinned to {pinned}; run `rankstream models unpin` first")

    @staticmethod
    async def call(what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            raise StoreError(f"{what} in Redis failed: {exc}") from exc
