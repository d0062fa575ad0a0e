"""Canary and shadow versions: the operator's decisions in Redis, next to the active pointer.

A canary (`rs:{model}:canary`) names a version, the share of users it serves and the live-quality
counters of both versions when it started, so its verdict compares the two arms over the same time.
Any replica may reach the verdict (stream/canary.py); a Lua script applies it only if the canary is
still the one judged, so two replicas deciding at once change the pointer once. A shadow
(`rs:{model}:shadow`) names a version that replicas score a sample of users with, off the hot path,
without writing its lists. The keys share the registry's `{model}` hash tag (one Redis Cluster slot).
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from rankstream.stream.canary import ArmCounts, Clusters, Policy, Verdict, decide, group_counters
from rankstream.stream.errors import ConfigError
from rankstream.stream.registry import ACTIVE_KEY, ANNOUNCE_CHANNEL, LOG_KEY, Activation, Registry
from rankstream.stream.store import QUALITY_KEY

log = logging.getLogger(__name__)

CANARY_KEY = "rs:{model}:canary"
SHADOW_KEY = "rs:{model}:shadow"
_LOG_MAX = 200
DEFAULT_SHADOW_SAMPLE = 0.05  # `models shadow` without --sample

# KEYS: canary, active, log. ARGV: the canary record judged, the version to make active ("" to keep the
# active one), the log record. 0 when the canary changed meanwhile (another replica decided first).
_CONCLUDE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return 1
"""


@dataclass(frozen=True)
class Canary:
    version: str
    share: float
    active: str  # the version it is compared with
    started_at: float  # unix s
    baseline: dict[str, dict[str, int]] = field(default_factory=dict)  # version -> counters at start

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def tag(self) -> str:
        """Names this canary's per-user sums in the quality hash (`<version>@<tag>:<field>`)."""
        return f"c{int(self.started_at * 1000)}"

    def arms(self, counters: dict[str, dict[str, int]]) -> tuple[ArmCounts, ArmCounts]:
        """(active, canary) counters since the canary started, with their per-user sums."""

        def since(version: str) -> ArmCounts:
            now = ArmCounts.from_fields(counters.get(version, {}))
            grown = now.minus(ArmCounts.from_fields(self.baseline.get(version, {})))
            return grown.with_clusters(Clusters.from_fields(counters.get(f"{version}@{self.tag}", {})))

        return since(self.active), since(self.version)


@dataclass(frozen=True)
class Shadow:
    version: str
    sample: float


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def read_counters(registry: Registry) -> dict[str, dict[str, int]]:
    return group_counters(await registry.call("reading live quality", registry.client.hgetall(QUALITY_KEY)))


def parse_canary(raw: str) -> Canary:
    """The canary record as stored; ConfigError naming the key if it is not one."""
    try:
        data = json.loads(raw)
        canary = Canary(
            str(data["version"]),
            float(data["share"]),
            str(data["active"]),
            float(data["started_at"]),
            {str(v): {str(k): int(n) for k, n in f.items()} for v, f in data.get("baseline", {}).items()},
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{CANARY_KEY} holds no canary record ({exc!r}); `rankstream models canary --end`") from exc
    if not 0 < canary.share < 1:
        raise ConfigError(f"{CANARY_KEY}: share {canary.share} is not in (0, 1); `rankstream models canary --end`")
    return canary


def parse_shadow(raw: str) -> Shadow:
    """The shadow record as stored; ConfigError naming the key if it is not one."""
    try:
        data = json.loads(raw)
        shadow = Shadow(str(data["version"]), float(data["sample"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{SHADOW_KEY} holds no shadow record ({exc!r}); `rankstream models shadow --stop`") from exc
    if not 0 < shadow.sample <= 1:
        raise ConfigError(f"{SHADOW_KEY}: sample {shadow.sample} is not in (0, 1]; `rankstream models shadow --stop`")
    return shadow


async def read_canary(registry: Registry) -> Canary | None:
    raw = await registry.call("reading the canary", registry.client.get(CANARY_KEY))
    return None if raw is None else parse_canary(raw)


async def read_shadow(registry: Registry) -> Shadow | None:
    raw = await registry.call("reading the shadow", registry.client.get(SHADOW_KEY))
    return None if raw is None else parse_shadow(raw)


async def start_canary(registry: Registry, version: str, share: float) -> Canary:
    """Serve `version` to `share` of users beside the active one, until the verdict (or `end_canary`)."""
    if not 0 < share < 1:
        raise ConfigError(f"--share {share}: a canary serves a share of users strictly between 0 and 1")
    registry.verify(version)
    await registry.refuse_if_pinned("start a canary")
    active = await registry.active()
    if active is None or active == version:
        raise ConfigError(f"cannot canary {version}: the active version is {active}; publish or promote one first")
    if (running := await read_canary(registry)) is not None:
        raise ConfigError(f"a canary of {running.version} is running; `rankstream models canary --end` first")
    counters = await read_counters(registry)
    canary = Canary(version, share, active, time.time(), {v: counters.get(v, {}) for v in (active, version)})
    record = Activation(version, "canary", _now(), active, {"share": share})
    async with registry.client.pipeline(transaction=True) as pipe:
        pipe.set(CANARY_KEY, canary.to_json())
        pipe.lpush(LOG_KEY, record.to_json())
        pipe.ltrim(LOG_KEY, 0, _LOG_MAX - 1)
        await registry.call("starting a canary", pipe.execute())
    await registry.call("announcing a canary", registry.client.publish(ANNOUNCE_CHANNEL, version))
    log.info("canary %s at %.0f%% of users beside %s", version, share * 100, active)
    return canary


async def judge(registry: Registry, policy: Policy) -> Verdict | None:
    """Decide the running canary if its figures allow; the verdict applied, or None (none, or wait)."""
    canary = await read_canary(registry)
    if canary is None:
        return None
    verdict = decide(*canary.arms(await read_counters(registry)), policy)
    if verdict.action == "wait":
        return None
    promoted = verdict.action == "promote"
    applied = await conclude(registry, canary, f"canary-{verdict.action}", promoted, verdict.detail())
    return verdict if applied else None


async def end_canary(registry: Registry) -> Canary:
    """Stop the running canary without promoting it (an operator's call); removes an unreadable record too."""
    try:
        canary = await read_canary(registry)
    except ConfigError:
        await registry.call("removing the canary record", registry.client.delete(CANARY_KEY))
        raise
    if canary is None:
        raise ConfigError("no canary is running")
    counters = await read_counters(registry)
    active, arm = canary.arms(counters)
    await conclude(registry, canary, "canary-end", False, {"active": active.summary(), "canary": arm.summary()})
    return canary


async def conclude(registry: Registry, canary: Canary, reason: str, promote: bool, detail: dict[str, object]) -> bool:
    """End `canary` (promoting it or not) if it is still the running one; log the figures. True if applied."""
    version = canary.version if promote else canary.active
    record = Activation(version, reason, _now(), canary.active, detail)
    keys = [CANARY_KEY, ACTIVE_KEY, LOG_KEY]
    args = [canary.to_json(), canary.version if promote else "", record.to_json(), _LOG_MAX]
    applied = await registry.call("deciding a canary", registry.client.eval(_CONCLUDE_LUA, len(keys), *keys, *args))
    if applied:
        await registry.call("announcing a decision", registry.client.publish(ANNOUNCE_CHANNEL, version))
        log.warning("canary %s: %s (%s)", canary.version, reason, detail.get("reason", ""))
    return bool(applied)


async def start_shadow(registry: Registry, version: str, sample: float) -> Shadow:
    """Score `sample` of users with `version` too, off the hot path; its lists are never written."""
    if not 0 < sample <= 1:
        raise ConfigError(f"--sample {sample}: a shadow scores a share of users in (0, 1]")
    registry.verify(version)
    shadow = Shadow(version, sample)
    record = Activation(version, "shadow", _now(), await registry.active(), {"sample": sample})
    async with registry.client.pipeline(transaction=True) as pipe:
        pipe.set(SHADOW_KEY, json.dumps(asdict(shadow)))
        pipe.lpush(LOG_KEY, record.to_json())
        pipe.ltrim(LOG_KEY, 0, _LOG_MAX - 1)
        await registry.call("starting a shadow", pipe.execute())
    await registry.call("announcing a shadow", registry.client.publish(ANNOUNCE_CHANNEL, version))
    return shadow


async def stop_shadow(registry: Registry) -> None:
    await registry.call("stopping the shadow", registry.client.delete(SHADOW_KEY))
    await registry.call("announcing", registry.client.publish(ANNOUNCE_CHANNEL, ""))
