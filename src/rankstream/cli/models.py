"""`rankstream models list | inspect | publish | promote | rollback | pin | unpin | canary | shadow`: the
registry for operators.

Reads the same registry the scorers follow: artifacts under RANKSTREAM_MODEL_DIR (default
$RANKSTREAM_HOME/models), decisions in the Redis of RANKSTREAM_REDIS_URL.
"""

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rankstream.stream.canary import ArmCounts
from rankstream.stream.errors import ArtifactError
from rankstream.stream.redis_client import check_redis, connect_from_settings
from rankstream.stream.registry import Registry
from rankstream.stream.rollouts import (
    DEFAULT_SHADOW_SAMPLE,
    end_canary,
    read_canary,
    read_counters,
    read_shadow,
    start_canary,
    start_shadow,
    stop_shadow,
)
from rankstream.stream.settings import Settings


def open_registry(settings: Settings, default_root: Path) -> Registry:
    root = settings.model_dir or default_root
    return Registry(root, connect_from_settings(settings))


async def _live_quality(registry: Registry) -> dict[str, dict[str, float | int | None]]:
    """Each version's live figures since it was first served: hit-rate, events written, p99, error rate."""
    return {v: ArmCounts.from_fields(f).summary() for v, f in (await read_counters(registry)).items()}


async def describe_versions(registry: Registry) -> dict[str, Any]:
    """Every version with its chain and metrics, which one is active or pinned, and what replicas serve."""
    active, pinned = await registry.active(), await registry.pinned()
    quality = await _live_quality(registry)
    versions = []
    for v in registry.versions():
        row: dict[str, Any] = {"version": v, "active": v == active, "pinned": v == pinned}
        try:
            manifest = registry.verify(v)
            row |= {
                "ok": True,
                "created_at": manifest.created_at.isoformat(timespec="seconds"),
                "parent": manifest.parent,
                "method_chain": list(manifest.method_chain),
                "metrics": manifest.metrics,
            }
        except ArtifactError as exc:
            row |= {"ok": False, "problem": str(exc)}
        row["live"] = quality.get(v, {})
        versions.append(row)
    serving = await registry.serving()
    now = time.time()
    replicas = {name: s | {"seen_s_ago": round(now - s["at"], 1)} for name, s in serving.items()}
    canary, shadow = await read_canary(registry), await read_shadow(registry)
    return {
        "root": str(registry.root),
        "active": active,
        "pinned": pinned,
        "canary": None if canary is None else _canary_state(canary, await read_counters(registry)),
        "shadow": None if shadow is None else _shadow_state(shadow, await read_counters(registry)),
        "versions": versions,
        "replicas": replicas,
    }


def _shadow_state(shadow: Any, counters: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The shadow version and its would-be hit-rate beside the served lists' on the same events."""
    f = counters.get(shadow.version, {})
    events = f.get("shadow_events", 0)

    def rate(hits: int) -> float | None:
        return round(hits / events, 5) if events else None

    return shadow.__dict__ | {
        "events": events,
        "hit_rate": rate(f.get("shadow_hits", 0)),
        "served_hit_rate": rate(f.get("shadow_served_hits", 0)),
    }


def _canary_state(canary: Any, counters: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The running canary and both arms' figures since it started."""
    active, arm = canary.arms(counters)
    return {
        "version": canary.version,
        "share": canary.share,
        "against": canary.active,
        "running_s": round(time.time() - canary.started_at, 1),
        "arms": {"active": active.summary(), "canary": arm.summary()},
    }


def format_versions(state: dict[str, Any]) -> str:
    lines = [f"registry {state['root']}  active: {state['active']}  pinned: {state['pinned'] or '-'}"]
    lines.append(f"  {'':2} {'version':<40} {'NDCG@10':>13} {'live hit@k':>10} {'p99 ms':>7} {'errors':>7}  chain")
    for row in state["versions"]:
        mark = ("*" if row["active"] else " ") + ("P" if row["pinned"] else " ")
        if not row["ok"]:
            lines.append(f"  {mark} {row['version']:<40} REFUSED: {row['problem']}")
            continue
        ndcg = row["metrics"].get("valid_ndcg@10", row["metrics"].get("holdout_ndcg@10"))
        live, p99, errors = (row["live"].get(k) for k in ("hit_rate", "p99_ms", "error_rate"))
        lines.append(
            f"  {mark} {row['version']:<40} {'-' if ndcg is None else f'{ndcg:.4f}':>13} "
            f"{'-' if live is None else f'{live:.3f}':>10} {'-' if p99 is None else f'{p99:.0f}':>7} "
            f"{'-' if errors is None else f'{errors:.2%}':>7}  {' -> '.join(row['method_chain'])}"
        )
    if (c := state["canary"]) is not None:
        a, k = c["arms"]["active"], c["arms"]["canary"]
        lines.append(
            f"canary {c['version']} at {c['share']:.0%} vs {c['against']} for {c['running_s']:.0f}s: "
            f"hit-rate {k['hit_rate']:.4f} ({k['events']} events) vs {a['hit_rate']:.4f} ({a['events']}), "
            f"p99 {k['p99_ms']} vs {a['p99_ms']} ms"
        )
    if (sh := state["shadow"]) is not None:
        lines.append(
            f"shadow {sh['version']} scores {sh['sample']:.0%} of users (not served): would-be hit-rate "
            f"{sh['hit_rate']} vs served {sh['served_hit_rate']} on the same {sh['events']} events"
        )
    lines.append("replicas:" if state["replicas"] else "replicas: none reporting")
    for name, s in sorted(state["replicas"].items()):
        lines.append(f"  {name:<30} serves {s['version']} (seen {s['seen_s_ago']}s ago)")
    return "\n".join(lines)


async def run_models(args: argparse.Namespace, settings: Settings, default_root: Path) -> str:
    """Carry out one `models` action; return what to print."""
    registry = open_registry(settings, default_root)
    try:
        await check_redis(registry.client)  # a refused login or untrusted certificate: one line saying which
        action: Callable[[], Awaitable[Any]]
        if args.action == "list":
            state = await describe_versions(registry)
            return json.dumps(state, indent=2) if args.json else format_versions(state)
        if args.action == "inspect":
            manifest = registry.verify(args.version)  # refuses a tampered artifact, naming each problem
            history = [a.__dict__ for a in await registry.activations() if a.version == args.version]
            out = json.loads(manifest.model_dump_json()) | {"checksums": "verified", "activations": history}
            out["live"] = (await _live_quality(registry)).get(args.version, {})
            return json.dumps(out, indent=2)
        if args.action == "publish":
            version, activated = await registry.publish(args.artifact)
            held = "" if activated else f" (not activated: pinned to {await registry.pinned()})"
            return f"published {version}{held}"
        if args.action == "canary":
            if args.end:
                ended = await end_canary(registry)
                return f"canary {ended.version} ended; {ended.active} serves every user"
            if args.version is None:
                return "give a VERSION to canary, or --end"
            c = await start_canary(registry, args.version, args.share)
            return f"canary {c.version} serves {c.share:.0%} of users beside {c.active}; replicas follow within seconds"
        if args.action == "shadow":
            if args.stop:
                await stop_shadow(registry)
                return "shadow stopped"
            if args.version is None:
                return "give a VERSION to shadow, or --stop"
            sh = await start_shadow(registry, args.version, args.sample)
            return f"shadow {sh.version} scores {sh.sample:.0%} of users off the hot path (lists not written)"
        if args.action == "promote":
            action = lambda: registry.promote(args.version)  # noqa: E731
        elif args.action == "rollback":
            action = registry.rollback
        elif args.action == "pin":
            action = lambda: registry.pin(args.version)  # noqa: E731
        else:
            await registry.unpin()
            return "unpinned: publishes activate again"
        record = await action()
        return f"active: {record.previous} -> {record.version} ({record.reason}); replicas follow within seconds"
    finally:
        await registry.client.aclose()


def add_parser(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    s = sub.add_parser("models", help="the model registry: list, inspect, publish, promote, rollback, pin, unpin")
    acts = s.add_subparsers(dest="action", required=True)
    a = acts.add_parser("list", help="versions, the active one, live hit-rate, what each replica serves")
    a.add_argument("--json", action="store_true")
    acts.add_parser("inspect", help="a version's manifest, verified checksums, activations").add_argument("version")
    acts.add_parser("publish", help="add an artifact directory and activate it").add_argument("artifact", type=Path)
    acts.add_parser("promote", help="activate a version").add_argument("version")
    acts.add_parser("rollback", help="activate the version that was active before the current one")
    acts.add_parser("pin", help="activate a version and hold it: publishes stop activating").add_argument("version")
    acts.add_parser("unpin", help="let publishes activate again")
    c = acts.add_parser("canary", help="serve a version to a share of users; promoted or rolled back on live figures")
    c.add_argument("version", nargs="?")
    c.add_argument("--share", type=float, default=0.1, help="share of users, by a hash of the user id (default 0.1)")
    c.add_argument("--end", action="store_true", help="stop the running canary without promoting it")
    c = acts.add_parser("shadow", help="score a sample of users with a version too, without serving its lists")
    c.add_argument("version", nargs="?")
    c.add_argument(
        "--sample", type=float, default=DEFAULT_SHADOW_SAMPLE, help=f"share of users (default {DEFAULT_SHADOW_SAMPLE})"
    )
    c.add_argument("--stop", action="store_true", help="stop shadow scoring")
    s.set_defaults(fn=handler)
