"""`rankstream models list | inspect | publish | promote | rollback | pin | unpin`: the registry for operators.

Reads the same registry the scorers follow: artifacts under RANKSTREAM_MODEL_DIR (default
$RANKSTREAM_HOME/models), decisions in the Redis of RANKSTREAM_REDIS_URL.
"""

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rankstream.stream.errors import ArtifactError
from rankstream.stream.redis_client import check_redis, connect_from_settings
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store


def open_registry(settings: Settings, default_root: Path) -> Registry:
    root = settings.model_dir or default_root
    return Registry(root, connect_from_settings(settings))


async def _live_quality(registry: Registry) -> dict[str, dict[str, float]]:
    """Each version's live hit-rate, from the Redis the registry uses (a read: the TTL is never applied)."""
    return await Store(registry.client, ttl_s=60).read_quality()


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
    return {"root": str(registry.root), "active": active, "pinned": pinned, "versions": versions, "replicas": replicas}


def format_versions(state: dict[str, Any]) -> str:
    lines = [f"registry {state['root']}  active: {state['active']}  pinned: {state['pinned'] or '-'}"]
    lines.append(f"  {'':2} {'version':<40} {'NDCG@10':>13} {'live hit@k':>10}  chain")
    for row in state["versions"]:
        mark = ("*" if row["active"] else " ") + ("P" if row["pinned"] else " ")
        if not row["ok"]:
            lines.append(f"  {mark} {row['version']:<40} REFUSED: {row['problem']}")
            continue
        ndcg = row["metrics"].get("valid_ndcg@10", row["metrics"].get("holdout_ndcg@10"))
        live = row["live"].get("hit_rate")
        lines.append(
            f"  {mark} {row['version']:<40} {'-' if ndcg is None else f'{ndcg:.4f}':>13} "
            f"{'-' if live is None else f'{live:.3f}':>10}  {' -> '.join(row['method_chain'])}"
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
    s.set_defaults(fn=handler)
