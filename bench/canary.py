"""`rankstream bench canary`: a canary under load, decided by the replicas from live figures.

Replica processes (as `bench swap` runs them) serve the demo's model under a steady load of test-period
events. After `warmup_s` a candidate is put in canary at `share` of users:
- `worse`: the same artifact with its linear part reversed, so the cross-encoder re-ranks the ten
  candidates the model's own linear part likes least (a deliberately bad model: same graph, same
  latency, far fewer of the items users click next);
- `equal`: the same files under another version name (the same model; any difference is noise).
The run waits for the replicas' verdict (stream/canary.py) and reports it with its figures: events per
arm, hit-rates, z, p99s, the seconds and the events produced from the canary's start to the decision;
then produces the rest, drains, and counts lost and not-reflected events like `bench swap`.
"""

import asyncio
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.bench.lists import ListWatch
from rankstream.bench.replicas import stop_all, wait_ready
from rankstream.bench.results import Record
from rankstream.bench.stream import count_not_reflected, produce_events
from rankstream.bench.swap import bench_settings, drained, open_registry, spawn_fleet
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.stream.artifact import load_manifest, write_manifest
from rankstream.stream.errors import ConfigError
from rankstream.stream.registry import Registry
from rankstream.stream.rollouts import read_canary, start_canary

log = logging.getLogger(__name__)

KINDS = ("worse", "equal")
_SETTLE_S = 3.0


@dataclass(frozen=True)
class CanaryBench(Record):
    """`bench canary`. `decision`: the activation log's record of the verdict (its `detail` holds both
    arms' figures since the canary started); `decided_after_s` and `events_produced_to_decision`: from
    the canary's start to it (None if no verdict came within `max_s`)."""

    kind: str
    share: float
    rate: float
    replicas: int
    min_events: int
    active: str
    candidate: str
    decision: dict[str, Any] | None
    decided_after_s: float | None
    events_produced_to_decision: int | None
    events: int
    lost: int
    users_not_reflected: int
    events_by_version: dict[str, int]
    lists_by_version: dict[str, int]


def make_candidate(model: Path, kind: str, folder: Path) -> Path:
    """An artifact beside `model` for the canary (module docstring), with its own version and checksums."""
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind}: one of {', '.join(KINDS)}")
    manifest = load_manifest(model)
    spec = manifest.input_spec
    if kind == "worse" and spec.linear_file is None:
        raise ConfigError(f"{model} has no linear part to reverse; `--kind worse` needs a model that ships one")
    version = f"{manifest.version}-canary-{kind}"
    target = folder / version
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model, target)
    (target / "manifest.json").unlink()
    if kind == "worse":
        path = target / str(spec.linear_file)
        linear = json.loads(path.read_text())
        for key in ("position_bias", "signal_weight"):
            if linear.get(key) is not None:
                linear[key] = [-w for w in linear[key]]
        path.write_text(json.dumps(linear))
    write_manifest(
        target,
        version=version,
        parent=manifest.version,
        method_chain=[*manifest.method_chain, f"bench-canary:{kind}"],
        metrics={},
        input_spec=spec,
        reference=manifest.reference,
    )
    return target


async def _decision(registry: Registry, started: float, max_s: float) -> tuple[dict[str, Any] | None, float | None]:
    """Wait for the canary to be decided; (the log record, seconds after `started`) or (None, None)."""
    while time.time() - started < max_s:
        if await read_canary(registry) is None:
            record = next((a for a in await registry.activations() if a.reason.startswith("canary-")), None)
            return (None if record is None else record.__dict__), time.time() - started
        await asyncio.sleep(0.5)
    return None, None


async def bench_canary(
    home: Path,
    model: Path,
    *,
    kind: str,
    rate: float,
    share: float = 0.1,
    replicas: int = 2,
    min_events: int = 2000,
    warmup_s: float = 20.0,
    max_s: float = 240.0,
) -> CanaryBench:
    settings = bench_settings(home, "bench-canary")
    topic = settings.topic
    candidate = make_candidate(model, kind, home / "bench-canary" / "candidates")
    store, registry, (active, cand) = await open_registry(settings, home, [model, candidate], name="bench-canary")
    try:
        await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
        evs = split_events(home / "data", "test", None)
        needed = int(rate * (warmup_s + max_s))
        events = (evs * (needed // len(evs) + 1))[:needed]
        fleet = spawn_fleet(
            settings, registry, replicas, home / "bench-canary" / "replicas", canary_min_events=min_events
        )
        watch = ListWatch(registry.client, sorted({e.user_id for e in events}))
        done = asyncio.Event()
        try:
            await wait_ready(fleet)
            await asyncio.sleep(_SETTLE_S)
            watching = asyncio.create_task(watch.run(done))
            producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, topic, events, rate))
            await asyncio.sleep(warmup_s)
            await start_canary(registry, cand, share)
            started = time.time()
            decision, after_s = await _decision(registry, started, max_s)
            last = await producing
            await drained(settings)
            done.set()
            await watching
        finally:
            done.set()
            stop_all(fleet)
        stats = [r.stats() for r in fleet]
        not_reflected = await count_not_reflected(store, topic, last)
    finally:
        await store.close()
    by_version: Counter[str] = Counter()
    for st in stats:
        by_version.update(st.events_by_version)
    return CanaryBench(
        kind=kind,
        share=share,
        rate=rate,
        replicas=replicas,
        min_events=min_events,
        active=active,
        candidate=cand,
        decision=decision,
        decided_after_s=None if after_s is None else round(after_s, 1),
        events_produced_to_decision=None if after_s is None else round(after_s * rate),
        events=len(events),
        lost=max(len(events) - sum(st.events + st.dlq for st in stats), 0),
        users_not_reflected=not_reflected,
        events_by_version=dict(by_version),
        lists_by_version=dict(Counter(s.version for s in watch.samples)),
    )


def format_canary(r: CanaryBench) -> str:
    lines = [
        f"bench canary ({r.kind}): {r.candidate} at {r.share:.0%} of users beside {r.active}",
        f"  {r.replicas} replicas, {r.rate:.0f} events/s, verdict after {r.min_events} events per arm",
    ]
    if r.decision is None:
        lines.append("  no verdict within the run")
    else:
        d = r.decision.get("detail") or {}
        lines.append(
            f"  verdict: {r.decision['reason']} after {r.decided_after_s}s "
            f"(~{r.events_produced_to_decision} events produced): {d.get('reason', '')}"
        )
        for arm in ("active", "canary"):
            a = d.get(arm, {})
            lines.append(
                f"    {arm:<7} events {a.get('events')} hit-rate {a.get('hit_rate')} "
                f"p99 {a.get('p99_ms')} ms error rate {a.get('error_rate')}"
            )
    lines.append(
        f"  events {r.events}, lost {r.lost}, users not reflected {r.users_not_reflected}; "
        f"lists by version {r.lists_by_version}"
    )
    return "\n".join(lines)
