"""`rankstream recompress`: rebuild the served student from a window of recent clicks, judge it against the
active model on the newest held-out baskets, and publish it only if it holds up.

One cycle:
1. Window: the clicks since `since`, or in the last `days`. From the prepared files the window ends at
   the newest event; from Kafka it is the clicks topic from the offsets at the window start (record
   time, i.e. when the click arrived) up to the end offsets when the read began.
2. Instances, one per basket and in time order, built as training and evaluation build them (history
   from everything before the basket, co-visitation candidates). The newest `holdout` share is held out
   for the gate; training lists come from the rest.
3. The compress run's fp32 teacher re-scores the training lists; the student the active version was
   exported from (else the compress run's best INT8 student) is distilled on them and exported to INT8.
4. New student and active model rank the same held-out lists. The gate passes when the new NDCG@10 is
   at least the active one's minus `tolerance` (absolute NDCG points).
5. On a pass the artifact is published to the registry (activated and announced unless pinned); on a
   refusal nothing is published.

The cycle's torch weights stay in `work/<version>/student`, so the next cycle warm-starts from the
version that is active then.
"""

import asyncio
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from tqdm import tqdm

from rankstream.compression.distil import TrainConfig
from rankstream.compression.pairs import make_groups
from rankstream.compression.recompress import StudentSource, recompress_chain, redistil, teacher_scores
from rankstream.data.instances import Instance, build_instances
from rankstream.data.prepare import Prepared
from rankstream.data.windows import instance_signals
from rankstream.evaluation.evalset import N_CANDIDATES, EvalSet, ScoreLists
from rankstream.stream.artifact import MANIFEST, stamp_metrics
from rankstream.stream.errors import ConfigError, RankstreamError
from rankstream.stream.events import ClickEvent, Rejected, parse_event
from rankstream.stream.ranker import Ranker
from rankstream.stream.redis_client import connect
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

CYCLE_FILE = "cycle.json"
MAX_EPOCHS = 3


@dataclass(frozen=True)
class RecompressConfig:
    """One cycle's knobs. `tolerance` is absolute: 0.01 lets NDCG@10 drop by at most one point."""

    days: float | None = 28.0
    since: datetime | None = None
    from_kafka: bool = False
    holdout: float = 0.2
    train: TrainConfig = TrainConfig(steps=200, groups_per_batch=2, lr=5e-5)
    neg_per_instance: int = 15
    max_eval_instances: int | None = 1000
    tolerance: float = 0.01
    threads: int = 1
    keep_cycles: int = 5  # work directories kept besides the active version's

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout is a share of the window's baskets in (0, 1), got {self.holdout}")
        if self.since is None and (self.days is None or self.days <= 0):
            raise ConfigError("give the window as --days N (N > 0) or --since TIME")


PRESETS: dict[str, RecompressConfig] = {
    # Real data: four weeks of clicks hold enough baskets to train on and to hold out for the gate, and a
    # short distillation keeps a cycle cheap enough to run often on one niced thread beside the scorers.
    "fast": RecompressConfig(),
    # Tests: the random-weight tiny BERT, a handful of steps.
    "tiny": RecompressConfig(
        days=None,
        since=datetime(1970, 1, 1, tzinfo=UTC),
        train=TrainConfig(steps=4, groups_per_batch=2, lr=1e-3, checkpoint_every=2),
        neg_per_instance=5,
        max_eval_instances=None,
    ),
}


@dataclass(frozen=True)
class Paths:
    data: Path  # prepared data (`rankstream prepare`)
    compress_run: Path  # a `rankstream compress` run: teacher artifact and students' torch weights
    registry: Path  # the registry root the scorers follow
    work: Path  # this job's working folders, one per cycle


# -- inputs ------------------------------------------------------------------------------------------


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `30m`, `6h`, `1h30m`, `2d`, `90s`."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ConfigError(f"--every {text!r}: write a duration like 30m, 6h, 1h30m or 1d")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--every {text!r} must be longer than zero")
    return seconds


def parse_since(text: str) -> datetime:
    """An ISO-8601 date or time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--since {text!r} is not an ISO-8601 date or time (e.g. 2011-11-10T00:00)") from exc
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CompressRun:
    """What recompression reuses from a `rankstream compress` run (read from its run.json)."""

    root: Path
    teacher_artifact: Path
    teacher_version: str
    best: StudentSource  # the INT8 student that passed the run's gate and scores fastest
    best_artifact: Path
    students: dict[str, StudentSource]  # every exported student by artifact version

    @classmethod
    def load(cls, root: Path) -> "CompressRun":
        root = Path(root)
        path = root / "run.json"
        if not path.is_file():
            raise ConfigError(
                f"{root}: no run.json; run `rankstream compress --preset fast` first (recompression reuses its "
                "teacher and best student), or point --compress-run at a finished run"
            )
        variants: dict[str, dict[str, Any]] = json.loads(path.read_text()).get("variants", {})
        teacher = variants.get("teacher-fp32", {})
        if "artifact" not in teacher:
            raise ConfigError(f"{path}: the run has no exported teacher-fp32 yet; let `rankstream compress` finish")
        students: dict[str, StudentSource] = {}
        ranked: list[tuple[float, str, str]] = []
        for key, v in variants.items():
            if not key.startswith("student-") or "artifact" not in v or "hf_dir" not in v:
                continue
            manifest = _manifest(Path(v["artifact"]))
            version = manifest["version"]
            students[version] = StudentSource(version, Path(v["hf_dir"]), tuple(manifest["method_chain"]))
            if key.endswith("-int8") and v.get("gate", {}).get("passed"):
                ranked.append((float(v.get("speed", {}).get("pairs_per_s", 0.0)), version, v["artifact"]))
        if not ranked:
            raise ConfigError(f"{path}: no INT8 student passed the run's gate; nothing to warm-start from")
        _, best, best_artifact = max(ranked)
        return cls(
            root=root,
            teacher_artifact=Path(teacher["artifact"]),
            teacher_version=_manifest(Path(teacher["artifact"]))["version"],
            best=students[best],
            best_artifact=Path(best_artifact),
            students=students,
        )


def _manifest(artifact: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((artifact / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{artifact}: no readable {MANIFEST}: {exc}") from exc
    return manifest


@dataclass(frozen=True)
class Window:
    """The clicks a cycle learns from, and everything users' histories may draw on."""

    source: str
    start: datetime
    end: datetime
    events: pd.DataFrame  # user_id, item_id, ts (UTC), event[, basket]
    history: pd.DataFrame  # the same columns; includes `events`


def window_start(end: datetime, since: datetime | None, days: float | None) -> datetime:
    if since is not None:
        return since
    assert days is not None  # RecompressConfig guarantees one of the two
    return end - timedelta(days=days)


def window_from_files(prepared: Prepared, *, since: datetime | None, days: float | None) -> Window:
    """The prepared interactions from the window start to the newest event."""
    frame = prepared.interactions
    if frame.empty:
        raise ConfigError(f"{prepared.out_dir}: no interactions; run `rankstream prepare`")
    end = frame["ts"].max().to_pydatetime()
    start = window_start(end, since, days)
    events = frame[frame["ts"] >= pd.Timestamp(start)]
    return Window(f"files:{prepared.out_dir}", start, end, events, frame)


def window_from_events(
    prepared: Prepared, events: Sequence[ClickEvent], *, start: datetime, end: datetime, source: str
) -> Window:
    """Click events (read from Kafka) as a window; histories also draw on the prepared interactions."""
    frame = pd.DataFrame(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "ts": pd.to_datetime([e.ts for e in events], utc=True).astype("datetime64[us, UTC]"),
            "event": [e.event for e in events],
        }
    )
    base = prepared.interactions[["user_id", "item_id", "ts", "event"]]
    # A replay of stored data sends events the files already hold; count each click once.
    history = pd.concat([base, frame], ignore_index=True).drop_duplicates(["user_id", "item_id", "ts"])
    return Window(source, start, end, frame, history)


async def read_kafka_window(settings: Settings, start: datetime) -> tuple[list[ClickEvent], int]:
    """Valid events on the clicks topic from the first record at or after `start` up to the end offsets
    at the time of the call; (events, records skipped as invalid, which the scorers dead-letter)."""
    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **options)
    events: list[ClickEvent] = []
    invalid = 0
    try:
        await admin.start()
        await consumer.start()
        (described,) = await admin.describe_topics([settings.topic])
        tps = [TopicPartition(settings.topic, p["partition"]) for p in described["partitions"]]
        if not tps:
            raise ConfigError(f"topic {settings.topic} has no partitions on {settings.kafka_bootstrap}")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            first = found[tp].offset if found.get(tp) is not None else ends[tp]
            if first < ends[tp]:
                consumer.seek(tp, first)
                todo[tp] = ends[tp]
        log.info("reading %s from %s: %d partitions to read", settings.topic, start.isoformat(), len(todo))
        now = datetime.now(UTC)
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= todo.get(tp, -1):
                        continue  # arrived after the read began: the next cycle's
                    try:
                        events.append(parse_event(record.value, settings.max_event_bytes, now))
                    except Rejected:
                        invalid += 1
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    except KafkaError as exc:
        raise RankstreamError(f"reading {settings.topic} from {settings.kafka_bootstrap} failed: {exc}") from exc
    finally:
        await consumer.stop()
        await admin.close()
    log.info("read %d events from %s (%d invalid skipped)", len(events), settings.topic, invalid)
    return events, invalid


def split_holdout(instances: Sequence[Instance], share: float) -> tuple[list[Instance], list[Instance]]:
    """(older, newest): the newest `share` of the instances (time order) is held out."""
    n_hold = math.ceil(len(instances) * share)
    if n_hold < 1 or n_hold >= len(instances):
        raise ConfigError(
            f"the window holds {len(instances)} usable baskets: too few to train on and hold some out; "
            "widen it with --days or an earlier --since"
        )
    return list(instances[:-n_hold]), list(instances[-n_hold:])


# -- the gate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutGate:
    passed: bool
    ndcg: float
    active_ndcg: float
    floor: float
    tolerance: float
    reason: str


def holdout_gate(ndcg: float, active_ndcg: float, *, tolerance: float) -> HoldoutGate:
    """Pass when the new NDCG@10 >= the active model's - `tolerance` (absolute; negative demands a gain)."""
    floor = active_ndcg - tolerance
    passed = ndcg >= floor  # NaN fails
    reason = (
        f"new NDCG@10 {ndcg:.4f} {'>=' if passed else '<'} floor {floor:.4f} "
        f"(active {active_ndcg:.4f} - tolerance {tolerance:g})"
    )
    return HoldoutGate(passed, ndcg, active_ndcg, floor, tolerance, reason)


# -- one cycle ----------------------------------------------------------------------------------------


@dataclass
class CycleResult:
    version: str
    window: dict[str, Any]
    counts: dict[str, int]
    warm_start: str
    teacher: str
    reference: str  # the version the gate compared against (the active one, if any)
    new: dict[str, float]
    active: dict[str, float]
    baselines: dict[str, dict[str, float]]
    gate: HoldoutGate
    artifact: Path
    seconds: dict[str, float] = field(default_factory=dict)
    published: bool = False
    activated: bool = False


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)


def _progress(ranker: Ranker, desc: str) -> ScoreLists:
    """Score lists one batch each (as the scorer does), with a progress bar."""

    def score(
        lists: Sequence[Sequence[tuple[str, str]]], signals: Sequence[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        return [
            ranker.score_lists([pairs], None if signals is None else [signals[i]])[0]
            for i, pairs in enumerate(tqdm(lists, desc=desc, unit="list"))
        ]

    return score


def new_version() -> str:
    """`r` + UTC build time: recompressed versions sort by when they were made."""
    return "r" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def warm_start_source(active: str | None, run: CompressRun, work: Path) -> StudentSource:
    """The torch weights the active version was exported from; the compress run's best student otherwise."""
    if active is not None:
        record = work / active / CYCLE_FILE
        if (work / active / "student" / "config.json").is_file() and record.is_file():
            chain = json.loads(record.read_text())["method_chain"]
            return StudentSource(active, work / active / "student", tuple(chain))
        if active in run.students:
            return run.students[active]
        log.warning(
            "active version %s has no torch weights in %s or %s; warm-starting from %s instead",
            active,
            work,
            run.root,
            run.best.version,
        )
    return run.best


def build_and_judge(
    window: Window,
    prepared: Prepared,
    run: CompressRun,
    source: StudentSource,
    reference: tuple[str, Path],
    out: Path,
    *,
    version: str,
    config: RecompressConfig,
) -> CycleResult:
    """Steps 2-4 of a cycle (no publishing): the new artifact in `out/artifact` and the gate's verdict."""
    seconds: dict[str, float] = {}
    catalog = prepared.catalog
    with _timed(seconds, "instances"):
        instances = build_instances(
            window.history, window.events, prepared.neighbours, prepared.trending, n_candidates=N_CANDIDATES
        )
        train, held = split_holdout(instances, config.holdout)
        older = window.events[window.events["ts"] < pd.Timestamp(held[0].ts)]
        popularity = older["item_id"].value_counts().to_dict()
        if config.max_eval_instances is not None and len(held) > config.max_eval_instances:
            keep = np.sort(np.random.default_rng(0).choice(len(held), config.max_eval_instances, replace=False))
            held = [held[i] for i in keep]
        # A teacher that reads serve-time signals: every list carries them, from the tables the scorer serves with.
        with_signals = _manifest(run.teacher_artifact)["input_spec"].get("signals") is not None
        tables = {"neighbours": prepared.neighbours, "item_stats": prepared.item_stats} if with_signals else {}
        evalset = EvalSet.from_instances("holdout", held, catalog, popularity, **tables)
        if not evalset.lists:
            raise ConfigError(f"none of the {len(held)} held-out baskets has a positive among its candidates")
        signals = (
            [instance_signals(inst, prepared.neighbours, prepared.item_stats, catalog) for inst in train]
            if with_signals
            else None
        )
        groups = make_groups(
            train, catalog, neg_per_instance=config.neg_per_instance, top_negatives=0, seed=0, signals=signals
        )
        n_lists = len(groups)
        want = config.train.steps * config.train.groups_per_batch
        if len(groups) > want:
            picked = np.sort(np.random.default_rng(0).choice(len(groups), want, replace=False))
            groups = [groups[i] for i in picked]
        if not groups:
            raise ConfigError("no training list in the window (no basket with history and a candidate it bought)")
    log.info(
        "window %s .. %s: %d events, %d instances (%d train, %d held out, %d rankable), %d training lists",
        window.start, window.end, len(window.events), len(instances), len(train), len(held), len(evalset.lists),
        len(groups),
    )  # fmt: skip

    with _timed(seconds, "teacher_scores"):
        scores = teacher_scores(run.teacher_artifact, groups, threads=config.threads)
    window_note = f"window:{window.start:%Y%m%dT%H%M}-{window.end:%Y%m%dT%H%M}"
    chain = recompress_chain(source.method_chain, source.version, run.teacher_version, window_note)
    # A small window must not be fitted for the full step count: at most MAX_EPOCHS passes over its lists.
    steps = min(config.train.steps, math.ceil(MAX_EPOCHS * len(groups) / config.train.groups_per_batch))
    train_config = replace(config.train, threads=config.threads, steps=steps)
    with _timed(seconds, "distil_export"):
        _, artifact = redistil(source, groups, scores, out, version=version, config=train_config, chain=chain)

    with _timed(seconds, "evaluate"):
        new = evalset.quality(_progress(Ranker.load(artifact, threads=config.threads), f"held-out {version}"))
        ref_version, ref_dir = reference
        active = evalset.quality(_progress(Ranker.load(ref_dir, threads=config.threads), f"held-out {ref_version}"))
    gate = holdout_gate(new["ndcg@10"], active["ndcg@10"], tolerance=config.tolerance)
    stamp_metrics(
        artifact,
        {f"holdout_{k}": float(v) for k, v in new.items()}
        | {"holdout_active_ndcg@10": float(active["ndcg@10"]), "gate_passed": float(gate.passed)},
    )
    counts = {
        "window_events": len(window.events),
        "instances": len(instances),
        "train_instances": len(train),
        "train_lists": n_lists,
        "distil_lists": len(groups),
        "distil_pairs": sum(len(g) for g in groups),
        "distil_steps": steps,
        "held_out_instances": len(held),
        "held_out_lists": len(evalset.lists),
    }
    return CycleResult(
        version=version,
        window={"source": window.source, "start": window.start.isoformat(), "end": window.end.isoformat()},
        counts=counts,
        warm_start=source.version,
        teacher=run.teacher_version,
        reference=ref_version,
        new=new,
        active=active,
        baselines=evalset.baselines(),
        gate=gate,
        artifact=artifact,
        seconds=seconds,
    )


async def recompress_cycle(
    registry: Registry, paths: Paths, config: RecompressConfig, settings: Settings | None = None
) -> CycleResult:
    """One cycle: window -> instances -> re-distil -> evaluate -> gate -> publish on a pass."""
    t0 = time.perf_counter()
    version = new_version()
    active = await registry.active()
    run = CompressRun.load(paths.compress_run)
    prepared = Prepared.load(paths.data)
    if config.from_kafka:
        if settings is None:
            raise ConfigError("reading the window from Kafka needs the Kafka settings")
        end = datetime.now(UTC)
        start = window_start(end, config.since, config.days)
        events, _ = await read_kafka_window(settings, start)
        if not events:
            raise ConfigError(f"no valid click on {settings.topic} since {start.isoformat()}; widen the window")
        source_name = f"kafka:{settings.topic}"
        window = await asyncio.to_thread(window_from_events, prepared, events, start=start, end=end, source=source_name)
    else:
        window = await asyncio.to_thread(window_from_files, prepared, since=config.since, days=config.days)
    source = warm_start_source(active, run, paths.work)
    if active is None:
        log.warning("no active version in the registry; the gate compares against %s", run.best.version)
        reference = (run.best.version, run.best_artifact)
    else:
        reference = (active, registry.path(active))
    out = paths.work / version
    out.mkdir(parents=True, exist_ok=False)
    try:
        result = await asyncio.to_thread(
            build_and_judge, window, prepared, run, source, reference, out, version=version, config=config
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed cycle leaves no half-built folder behind
        raise
    record: dict[str, Any] = {"method_chain": list(_manifest(result.artifact)["method_chain"])}
    if result.gate.passed:
        with _timed(result.seconds, "publish"):
            _, result.activated = await registry.publish(result.artifact)
        result.published = True
    else:
        log.warning("recompress %s refused by the gate: %s; nothing published", version, result.gate.reason)
    result.seconds["total"] = round(time.perf_counter() - t0, 2)
    record |= json.loads(json.dumps(asdict(result), default=str))
    (out / CYCLE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    keep = {version, await registry.active() or version}
    _prune(paths.work, keep=keep, newest=config.keep_cycles)
    log.info("recompress %s", summary(result))
    return result


def _prune(work: Path, *, keep: set[str], newest: int) -> None:
    """Remove all but the `newest` cycle folders and those in `keep` (the active version's weights)."""
    cycles = sorted(p for p in work.iterdir() if p.is_dir() and (p / CYCLE_FILE).is_file())
    for path in cycles[: max(len(cycles) - newest, 0)]:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _verdict(result: CycleResult) -> str:
    if not result.published:
        return "REFUSED by the gate, nothing published"
    return "published and activated" if result.activated else "published, not activated (the registry is pinned)"


def summary(result: CycleResult) -> str:
    """One line per cycle, for the log."""
    return (
        f"{result.version}: {_verdict(result)}; NDCG@10 new {result.new['ndcg@10']:.4f} vs {result.reference} "
        f"{result.active['ndcg@10']:.4f} on {result.counts['held_out_lists']} held-out lists; "
        f"{result.seconds.get('total', 0):.0f}s"
    )


def format_result(result: CycleResult) -> str:
    """What a person reads after one cycle."""
    c, w, s = result.counts, result.window, result.seconds
    cov = result.baselines["covisit"]["ndcg@10"]
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in s.items() if k != "total")
    return "\n".join(
        [
            f"recompress {result.version}: {_verdict(result)}",
            f"  window    {w['source']}  {w['start']} .. {w['end']}: {c['window_events']:,} events, "
            f"{c['instances']:,} baskets usable",
            f"  training  {c['train_instances']:,} older baskets -> {c['train_lists']:,} lists, "
            f"{c['distil_lists']:,} distilled ({c['distil_pairs']:,} pairs, {c['distil_steps']} steps); "
            f"warm start {result.warm_start}; teacher {result.teacher}",
            f"  held out  newest {c['held_out_instances']:,} baskets, {c['held_out_lists']:,} rankable lists",
            f"  NDCG@10   new {result.new['ndcg@10']:.4f} | {result.reference} {result.active['ndcg@10']:.4f} "
            f"| co-visitation order {cov:.4f}",
            f"  gate      {'pass' if result.gate.passed else 'FAIL'}: {result.gate.reason}",
            f"  artifact  {result.artifact}",
            f"  time      {s.get('total', 0):.0f}s ({steps})",
        ]
    )


# -- the job --------------------------------------------------------------------------------------------


def be_polite(threads: int) -> None:
    """Lower this process's claim on the CPU before any worker thread exists.

    Scorers run at nice 0. At nice 10 the kernel gives this job about a tenth of a scorer's weight when
    both want a core, so a busy scorer keeps its share and recompression runs on what is left; one torch
    thread (and one ONNX Runtime thread per session) bounds the job to a single core even on an idle
    machine. Threads inherit the nice value of the thread that creates them, so this runs first.
    """
    os.nice(10)
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


async def with_registry(
    settings: Settings, root: Path, fn: Callable[[Registry], Awaitable[CycleResult]]
) -> CycleResult:
    """Run `fn` with a Registry on the settings' Redis (closed afterwards)."""
    client = connect(settings.redis_url, cluster=settings.redis_cluster, **settings.redis_client_options())
    try:
        return await fn(Registry(root, client))
    finally:
        await client.aclose()


async def run_every(
    interval_s: float, cycle: Callable[[], Awaitable[CycleResult]], *, cycles: int | None = None
) -> list[CycleResult | None]:
    """Run `cycle` every `interval_s` (start to start); a failed cycle is logged and the schedule goes on.

    Forever unless `cycles` is given; returns each cycle's result (None for a failed one).
    """
    results: list[CycleResult | None] = []
    n = 0
    while cycles is None or n < cycles:
        n += 1
        started = time.monotonic()
        log.info("recompress cycle %d starting", n)
        try:
            result: CycleResult | None = await cycle()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - any failure ends this cycle only; the next one starts on time
            log.exception("recompress cycle %d failed", n)
            result = None
        results.append(result)
        if cycles is not None and n >= cycles:
            break
        # Start to start; a cycle longer than the interval skips the slots it overran.
        wait = interval_s - (time.monotonic() - started) % interval_s
        log.info("recompress cycle %d done; next in %.0fs", n, wait)
        await asyncio.sleep(wait)
    return results


def config_from(
    preset: str,
    *,
    days: float | None = None,
    since: str | None = None,
    from_kafka: bool = False,
    steps: int | None = None,
    tolerance: float | None = None,
    holdout: float | None = None,
) -> RecompressConfig:
    """A preset with the command line's overrides (`since` wins over the preset's window; so does `days`)."""
    base = PRESETS[preset]
    changes: dict[str, Any] = {"from_kafka": from_kafka}
    if since is not None:
        changes |= {"since": parse_since(since), "days": None}
    elif days is not None:
        changes |= {"days": days, "since": None}
    if steps is not None:
        changes["train"] = replace(base.train, steps=steps)
    if tolerance is not None:
        changes["tolerance"] = tolerance
    if holdout is not None:
        changes["holdout"] = holdout
    return replace(base, **changes)


def run_job(settings: Settings, paths: Paths, config: RecompressConfig, *, every: str | None) -> CycleResult | None:
    """One cycle (its result), or with `every` a cycle per interval until the process is stopped (None)."""
    interval = parse_duration(every) if every else None
    if (paths.registry / MANIFEST).is_file():
        raise ConfigError(f"{paths.registry} is one artifact, not a registry root; pass --registry FOLDER")
    be_polite(config.threads)

    def cycle() -> Awaitable[CycleResult]:
        return with_registry(settings, paths.registry, lambda r: recompress_cycle(r, paths, config, settings))

    if interval is None:
        return asyncio.run(cycle())
    asyncio.run(run_every(interval, cycle))
    return None
