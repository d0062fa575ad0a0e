"""`rankstream recompress`: rebuild the served student from a window of recent clicks, judge it against the
active model on the newest held-out baskets, and publish it only if it holds up.

One cycle:
1. Window (jobs/window.py, jobs/kafka_window.py): the clicks since `since`, or in the last `days`.
2. Instances, one per basket and in time order, built as training and evaluation build them: candidates
   and signals from the live tables just before each basket (`rankstream.data.live_instances`, every
   earlier event of the window's history replayed). The newest `holdout` share is held out for the gate;
   training lists come from the rest.
3. The compress run's fp32 teacher re-scores the training lists; the student the active version was
   exported from (else the compress run's best INT8 student) is distilled on them and exported to INT8.
4. New student and active model rank the same held-out lists. The gate passes when the new NDCG@10 is
   at least the active one's minus `tolerance` (absolute NDCG points).
5. On a pass the artifact is published to the registry (activated and announced unless pinned); on a
   refusal nothing is published.

The cycle's torch weights stay in `work/<version>/student`, so the next cycle warm-starts from the
version that is active then. Scheduling (`--every`) lives in jobs/schedule.py.
"""

import asyncio
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from rankstream.compression.distil import Group, teacher_scores
from rankstream.compression.gate import accuracy_gate
from rankstream.compression.pairs import make_groups
from rankstream.compression.redistil import StudentSource, recompress_chain, redistil
from rankstream.data.live_instances import live_instances
from rankstream.data.prepare import Prepared
from rankstream.evaluation.evalset import N_CANDIDATES, EvalSet, ScoreLists
from rankstream.jobs.cycle_record import CYCLE_FILE, CycleRecord
from rankstream.jobs.kafka_window import read_kafka_window
from rankstream.jobs.presets import RecompressPreset, recompress_preset
from rankstream.jobs.runs import CompressRunRecord
from rankstream.jobs.schedule import THREADS, run_scheduled
from rankstream.jobs.window import Window, split_holdout, window_from_events, window_from_files, window_start
from rankstream.stream.artifact import MANIFEST, load_manifest, stamp_metrics
from rankstream.stream.errors import ConfigError, JobError
from rankstream.stream.kafka_check import check_kafka
from rankstream.stream.ranker import Ranker
from rankstream.stream.redis_client import check_redis, connect_from_settings
from rankstream.stream.registry import Registry
from rankstream.stream.rollouts import start_canary
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

MAX_EPOCHS = 3
KEEP_CYCLES = 5  # cycle folders kept besides the active version's


@dataclass(frozen=True)
class Paths:
    data: Path  # prepared data (`rankstream prepare`)
    compress_run: Path  # a `rankstream compress` run: teacher artifact and students' torch weights
    registry: Path  # the registry root the scorers follow
    work: Path  # this job's working folders, one per cycle


def parse_since(text: str) -> datetime:
    """An ISO-8601 date or time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--since {text!r} is not an ISO-8601 date or time (e.g. 2011-11-10T00:00)") from exc
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def config_from(
    preset: str,
    *,
    days: float | None = None,
    since: str | None = None,
    from_kafka: bool = False,
    steps: int | None = None,
    tolerance: float | None = None,
    holdout: float | None = None,
    canary: float | None = None,
) -> RecompressPreset:
    """A preset with the command line's overrides (`since` wins over the preset's window; so does `days`)."""
    base = recompress_preset(preset)
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
    if canary is not None:
        changes["canary_share"] = canary
    return replace(base, **changes)


@dataclass(frozen=True)
class CompressRun:
    """What recompression reuses from a `rankstream compress` run (read through its record)."""

    root: Path
    teacher_artifact: Path
    teacher_version: str
    best: StudentSource  # the INT8 student that passed the run's gate and scores fastest
    best_artifact: Path
    students: dict[str, StudentSource]  # every exported student by artifact version
    max_length: int  # tokens per pair the run trained and serves at: a re-distilled student keeps it

    @classmethod
    def load(cls, root: Path) -> "CompressRun":
        record = CompressRunRecord.load(root)
        teacher = record.variants.get("teacher-fp32")
        if teacher is None:
            raise ConfigError(f"{root}: the run has no exported teacher-fp32 yet; let `rankstream compress` finish")
        students: dict[str, StudentSource] = {}
        for key, v in record.variants.items():
            if key.startswith("student-"):
                manifest = load_manifest(v.artifact)
                students[manifest.version] = StudentSource(manifest.version, v.hf_dir, manifest.method_chain)
        try:
            _, best = record.best_student(int8_only=True)
        except JobError as exc:
            raise ConfigError(f"{root}: no INT8 student passed the run's gate; nothing to warm-start from") from exc
        return cls(
            root=Path(root),
            teacher_artifact=teacher.artifact,
            teacher_version=load_manifest(teacher.artifact).version,
            best=students[load_manifest(best.artifact).version],
            best_artifact=best.artifact,
            students=students,
            max_length=load_manifest(best.artifact).input_spec.max_length,
        )


def new_version() -> str:
    """`r` + UTC build time: recompressed versions sort by when they were made."""
    return "r" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def warm_start_source(active: str | None, run: CompressRun, work: Path) -> StudentSource:
    """The torch weights the active version was exported from; the compress run's best student otherwise."""
    if active is not None:
        if (work / active / "student" / "config.json").is_file() and (work / active / CYCLE_FILE).is_file():
            chain = CycleRecord.load(work / active).method_chain
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


class Cycle:
    """Steps 2-4 of a cycle (no publishing): the new artifact in `out/artifact` and the gate's verdict."""

    def __init__(
        self, window: Window, prepared: Prepared, run: CompressRun, out: Path, *, version: str, config: RecompressPreset
    ) -> None:
        self.window, self.prepared, self.run, self.out = window, prepared, run, out
        self.version, self.config = version, config
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 2)

    def build_and_judge(self, source: StudentSource, reference: tuple[str, Path]) -> CycleRecord:
        with self.timed("instances"):
            groups, evalset = self.lists()
        with self.timed("teacher_scores"):
            scores = teacher_scores(self.run.teacher_artifact, groups, threads=THREADS)
        with self.timed("distil_export"):
            artifact = self.distil(source, groups, scores)
        with self.timed("evaluate"):
            new = evalset.quality(_progress(Ranker.load(artifact, threads=THREADS), f"held-out {self.version}"))
            ref_version, ref_dir = reference
            active = evalset.quality(_progress(Ranker.load(ref_dir, threads=THREADS), f"held-out {ref_version}"))
        gate = accuracy_gate(
            new["ndcg@10"], active["ndcg@10"], tolerance=self.config.tolerance, kind="absolute", reference="active"
        )
        stamp_metrics(
            artifact,
            {f"holdout_{k}": float(v) for k, v in new.items()}
            | {"holdout_active_ndcg@10": float(active["ndcg@10"]), "gate_passed": float(gate.passed)},
        )
        w = self.window
        return CycleRecord(
            version=self.version,
            window={"source": w.source, "start": w.start.isoformat(), "end": w.end.isoformat()},
            counts=self.counts,
            warm_start=source.version,
            teacher=self.run.teacher_version,
            reference=ref_version,
            new=new,
            active=active,
            baselines=evalset.baselines(),
            gate=gate,
            artifact=artifact,
            method_chain=list(load_manifest(artifact).method_chain),
            seconds=self.seconds,
        )

    def lists(self) -> tuple[list[Group], EvalSet]:
        """Training lists from the window's older baskets, and the evaluation set of the newest ones."""
        window, config, catalog = self.window, self.config, self.prepared.catalog
        # A teacher that reads serve-time signals: every list carries them, from the live tables at its basket.
        with_signals = load_manifest(self.run.teacher_artifact).input_spec.signals is not None
        live = live_instances(
            window.history,
            window.events,
            catalog,
            n_candidates=N_CANDIDATES,
            with_signals=with_signals,
            open_baskets=config.open_baskets,
            open_target=config.open_target,
        )
        # The newest share of the baskets is held out for the gate, whole baskets only (as every gate and
        # evaluation counts them); training takes everything before the first of them, open states included.
        baskets = [k for k, opened in enumerate(live.opened) if not opened]
        first_held = split_holdout(baskets, config.holdout)[1][0]
        instances = [live.instances[k] for k in baskets]
        train = live.instances[:first_held]
        held = [live.instances[k] for k in baskets if k >= first_held]
        signals = live.signals[:first_held] if live.signals is not None else None
        held_signals = [live.signals[k] for k in baskets if k >= first_held] if live.signals is not None else None
        older = window.events[window.events["ts"] < pd.Timestamp(held[0].ts)]
        popularity = older["item_id"].value_counts().to_dict()
        if config.max_eval_instances is not None and len(held) > config.max_eval_instances:
            keep = np.sort(np.random.default_rng(0).choice(len(held), config.max_eval_instances, replace=False))
            held = [held[i] for i in keep]
            held_signals = None if held_signals is None else [held_signals[i] for i in keep]
        evalset = EvalSet.from_instances("holdout", held, catalog, popularity, signals=held_signals)
        if not evalset.lists:
            raise JobError(f"none of the {len(held)} held-out baskets has a positive among its candidates")
        groups = make_groups(
            train, catalog, neg_per_instance=config.neg_per_instance, top_negatives=0, seed=0, signals=signals
        )
        n_lists = len(groups)
        want = config.train.steps * config.train.groups_per_batch
        if len(groups) > want:
            picked = np.sort(np.random.default_rng(0).choice(len(groups), want, replace=False))
            groups = [groups[i] for i in picked]
        if not groups:
            raise JobError("no training list in the window (no basket with history and a candidate it bought)")
        log.info(
            "window %s .. %s: %d events, %d instances (%d train, %d held out, %d rankable), %d training lists",
            *(window.start, window.end, len(window.events), len(instances), len(train), len(held)),
            *(len(evalset.lists), len(groups)),
        )
        self.counts = {
            "window_events": len(window.events),
            "instances": len(instances),
            "train_instances": len(train),
            "train_open_states": sum(live.opened[:first_held]),
            "train_lists": n_lists,
            "distil_lists": len(groups),
            "distil_pairs": sum(len(g) for g in groups),
            "held_out_instances": len(held),
            "held_out_lists": len(evalset.lists),
        }
        return groups, evalset

    def distil(self, source: StudentSource, groups: list[Group], scores: list[np.ndarray]) -> Path:
        """Re-distil `source` on the lists toward the teacher's scores; export INT8."""
        w = self.window
        window_note = f"window:{w.start:%Y%m%dT%H%M}-{w.end:%Y%m%dT%H%M}"
        chain = recompress_chain(source.method_chain, source.version, self.run.teacher_version, window_note)
        # A small window must not be fitted for the full step count: at most MAX_EPOCHS passes over its lists.
        train = self.config.train
        steps = min(train.steps, math.ceil(MAX_EPOCHS * len(groups) / train.groups_per_batch))
        self.counts["distil_steps"] = steps
        config = replace(train, threads=THREADS, steps=steps, max_length=self.run.max_length)
        _, artifact = redistil(source, groups, scores, self.out, version=self.version, config=config, chain=chain)
        return artifact


async def read_window(prepared: Prepared, config: RecompressPreset, settings: Settings | None) -> Window:
    """The cycle's window, from Kafka or from the prepared files."""
    if not config.from_kafka:
        return await asyncio.to_thread(window_from_files, prepared, since=config.since, days=config.days)
    if settings is None:
        raise ConfigError("reading the window from Kafka needs the Kafka settings")
    end = datetime.now(UTC)
    start = window_start(end, config.since, config.days)
    events, _ = await read_kafka_window(settings, start)
    if not events:
        raise JobError(f"no valid click on {settings.topic} since {start.isoformat()}; widen the window")
    source = f"kafka:{settings.topic}"
    return await asyncio.to_thread(window_from_events, prepared, events, start=start, end=end, source=source)


async def recompress_cycle(
    registry: Registry, paths: Paths, config: RecompressPreset, settings: Settings | None = None
) -> CycleRecord:
    """One cycle: window -> instances -> re-distil -> evaluate -> gate -> publish on a pass."""
    t0 = time.perf_counter()
    version = new_version()
    active = await registry.active()
    run = CompressRun.load(paths.compress_run)
    prepared = Prepared.load(paths.data)
    window = await read_window(prepared, config, settings)
    source = warm_start_source(active, run, paths.work)
    if active is None:
        log.warning("no active version in the registry; the gate compares against %s", run.best.version)
        reference = (run.best.version, run.best_artifact)
    else:
        reference = (active, registry.path(active))
    out = paths.work / version
    out.mkdir(parents=True, exist_ok=False)
    cycle = Cycle(window, prepared, run, out, version=version, config=config)
    try:
        result = await asyncio.to_thread(cycle.build_and_judge, source, reference)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed cycle leaves no half-built folder behind
        raise
    if result.gate.passed:
        with cycle.timed("publish"):
            await _publish(registry, result, config.canary_share if active is not None else None)
        result.published = True
    else:
        log.warning("recompress %s refused by the gate: %s; nothing published", version, result.gate.reason)
    result.seconds["total"] = round(time.perf_counter() - t0, 2)
    result.save(out)
    _prune(paths.work, keep={version, await registry.active() or version}, newest=KEEP_CYCLES)
    log.info("recompress %s", result.summary())
    return result


async def _publish(registry: Registry, result: CycleRecord, canary_share: float | None) -> None:
    """Activate the new version, or put it into a canary; a canary that cannot start leaves it registered."""
    if canary_share is None:
        _, result.activated = await registry.publish(result.artifact)
        return
    version = registry.add(result.artifact)
    try:
        await start_canary(registry, version, canary_share)
        result.canary = True
    except ConfigError as exc:  # pinned, or a canary already running: registered, not served
        log.warning("recompress %s registered but not in canary: %s", version, exc)


def _prune(work: Path, *, keep: set[str], newest: int) -> None:
    """Remove all but the `newest` cycle folders and those in `keep` (the active version's weights)."""
    cycles = sorted(p for p in work.iterdir() if p.is_dir() and (p / CYCLE_FILE).is_file())
    for path in cycles[: max(len(cycles) - newest, 0)]:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


async def with_registry(settings: Settings, paths: Paths, config: RecompressPreset) -> CycleRecord:
    """One cycle with a Registry on the settings' Redis (closed afterwards)."""
    client = connect_from_settings(settings)  # URL, Cluster or Sentinels: the Redis the scorers use
    try:
        # Before the cycle's work: a refused login or an untrusted certificate is one line saying which.
        await check_redis(client)
        if config.from_kafka:
            await check_kafka(settings)
        return await recompress_cycle(Registry(paths.registry, client), paths, config, settings)
    finally:
        await client.aclose()


def run_job(settings: Settings, paths: Paths, config: RecompressPreset, *, every: str | None) -> CycleRecord | None:
    """One cycle (its record), or with `every` a cycle per interval until the process is stopped (None)."""
    if (paths.registry / MANIFEST).is_file():
        raise ConfigError(f"{paths.registry} is one artifact, not a registry root; pass --registry FOLDER")
    return run_scheduled(every, lambda: with_registry(settings, paths, config))
