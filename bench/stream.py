"""`rankstream bench stream`: the scorer on the real Kafka and Redis, at the maximum rate and at a fixed one.

Phases on fresh topics, with a scorer in this process (one replica, as one `rankstream serve`):
- backlog: the first N test-period events are produced up front and drained: the drain rate. It
  overstates what the scorer sustains live, because a backlog lets it fold a user's many events into
  one scoring;
- ladder: the rest of the test period (or its first `live_events`) produced live at rising rates, as
  `bench/ladder.py` climbs (from half the drain rate, up by `STEP_UP` per step, or down by `STEP_DOWN`
  while the first rate fails); a rate is sustained when the scorer keeps up (lag gone within
  `DRAIN_LIMIT_S` of the last send) and p99 event -> Redis stays under `P99_LIMIT_MS`. The maximum
  sustained rate is the highest one that passed;
- fixed: the same events at a fixed share (`share`) of the maximum sustained rate.
Every live phase replays the same events, so each rate meets the same traffic (stretches of the period
differ: more users with small baskets mean more scorings per event). A live phase starts producing once
its scorer owns its partitions, after a few idle seconds.
Event -> Redis latency runs from each Kafka record's time to the moment its list was written, and is
split at the moment its chunk started scoring: waiting (queue, batch formation, reads) and scoring +
write (`Recorder.chunk_started`; without that mark from the scorer the split has no samples). Lost
events are checked against a reference: every user's list must reflect their last produced event.
`bench/repeat.py` runs all of this N times and reports the worst run.
"""

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.bench.ladder import DRAIN_LIMIT_S, P99_LIMIT_MS, climb
from rankstream.bench.latency import batch_times, latency_split, percentile, percentiles
from rankstream.bench.machine import CpuMeter
from rankstream.bench.results import BatchShape, CpuUse, Latency, Phase, ShadowCost, StreamBench
from rankstream.bench.tables import Replicas, replica_env
from rankstream.data.live_replay import LiveReplay, seeded
from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.errors import StackError
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.catalog import TitleVectors, embed_catalog, write_title_vectors
from rankstream.ops.load import split_events
from rankstream.ops.replay import Produced, Record, event_records, produce
from rankstream.stream.events import ClickEvent
from rankstream.stream.follow import warm_up
from rankstream.stream.lag import group_lag
from rankstream.stream.livestore import seed
from rankstream.stream.ranker import Ranker, serving_loader
from rankstream.stream.redis_client import RedisClient, connect_from_settings
from rankstream.stream.scorer import Scorer
from rankstream.stream.scoring import rerank_top_for
from rankstream.stream.settings import Settings
from rankstream.stream.shadow import ShadowScorer
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 1  # a Redis database of its own, flushed per phase: the demo's lists are left alone
_SETTLE_S = 3.0  # idle time before each phase, so one phase's aftermath (flushes, collections) is not the next's
_ASSIGN_WAIT_S = 60.0
# A short linger: it adds to the event -> Redis latency being measured.
_LINGER_MS = 2
Tables = tuple[dict[str, str], LiveReplay, TitleVectors | None]  # the catalog, the seeded shares, title vectors


async def produce_events(
    bootstrap: str, topic: str, events: list[ClickEvent], rate: float | None
) -> dict[str, tuple[int, int]]:
    """Send events from a separate process (a producer sharing the scorer's interpreter would steal its
    GIL and CPU, which no deployment does); return each user's last (partition, offset)."""
    produced = await produce_elsewhere(bootstrap, topic, events, rate)
    return {key.decode(): at for key, at in produced.last.items()}


async def produce_elsewhere(
    bootstrap: str, topic: str, events: list[ClickEvent], rate: float | None, *, keep_all: bool = False
) -> Produced:
    """`produce` in a process of its own (see `produce_events`)."""
    records = list(event_records(events))
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, _produce_blocking, bootstrap, topic, records, rate, keep_all)


def _produce_blocking(
    bootstrap: str, topic: str, records: list[Record], rate: float | None, keep_all: bool = False
) -> Produced:
    return asyncio.run(produce(bootstrap, topic, records, rate=rate, linger_ms=_LINGER_MS, keep_all=keep_all))


async def count_not_reflected(store: Store, topic: str, last: dict[str, tuple[int, int]]) -> int:
    missing = 0
    for user, (partition, offset) in last.items():
        rec = await store.read_list(user)
        if rec is None or (rec.get("topic"), rec["partition"], rec["offset"]) != (topic, partition, offset):
            missing += 1
    return missing


@dataclass
class _ShadowRun:
    """A shadow version for one phase, and what it did there."""

    ranker: Ranker
    sample: float
    scored: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class _Timing:
    """perf_counter marks of one phase: first batch scored, production started and done, lag gone."""

    first_batch: float | None
    produce_started: float
    produced: float | None
    end: float


async def run_phase(
    name: str,
    base: Settings,
    ranker: Ranker,
    client: RedisClient,
    tables: Tables,
    events: list[ClickEvent],
    rate: float | None,
    tables_log: Path | None = None,
    shadow: "_ShadowRun | None" = None,
) -> Phase:
    """One phase on a fresh topic and a flushed database, with a scorer of its own (and, with
    `tables_log`, a `rankstream tables` replica beside it, logging into that folder; with `shadow`, its
    version scoring its sample of users off the hot path, and its counts filled in)."""
    topic = f"bench-{name}-{int(time.time() * 1000)}"
    settings = base.model_copy(update={"topic": topic, "dlq_topic": f"{topic}.dlq", "group_id": f"g-{topic}"})
    await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
    await client.flushdb()
    store = Store(client, ttl_s=base.rec_ttl_s)
    catalog, seeded_tables, vectors = tables
    await store.load_catalog(catalog)
    await seed(client, topic, seeded_tables.shares, seeded_tables.params)
    if vectors is not None:
        await write_title_vectors(client, vectors)
    replicas = Replicas(replica_env(settings, topic), 1, tables_log) if tables_log is not None else None
    await asyncio.sleep(_SETTLE_S)
    backlog = None if rate is not None else await produce_events(settings.kafka_bootstrap, topic, events, None)
    scorer = Scorer(settings, ranker, store, latency_samples=1_000_000)
    if shadow is not None:
        share = settings.shadow_max_share
        scorer.use_shadow(ShadowScorer(shadow.ranker, shadow.sample, settings, scorer.tables, share))
    await scorer.start()
    task = asyncio.create_task(scorer.run())
    meter = CpuMeter()
    try:
        timing, live = await drive(scorer, task, settings, events, rate)
        cpu = meter.stop()
    finally:
        scorer.stop()
        await task
        await scorer.close()
        if shadow is not None and scorer.shadow is not None:
            await scorer.shadow.close()
            shadow.scored, shadow.skipped = scorer.shadow.scored_users, scorer.shadow.skipped_users
        if replicas is not None:
            replicas.check()
            replicas.stop()
    last = backlog if backlog is not None else live
    assert last is not None  # one of the two produced the phase's events
    return await phase_result(scorer, store, topic, len(events), rate, timing, last, cpu)


async def _wait_assigned(scorer: Scorer, topic: str) -> None:
    """A serving replica is measured, not its start: events flow once it owns its partitions."""
    deadline = time.monotonic() + _ASSIGN_WAIT_S
    while not scorer.assignment():
        if time.monotonic() > deadline:
            raise StackError(
                f"the scorer got no partitions of {topic} within {_ASSIGN_WAIT_S:.0f}s; "
                "check the broker with `rankstream stack status`"
            )
        await asyncio.sleep(0.05)


async def drive(
    scorer: Scorer, task: asyncio.Task[Any], settings: Settings, events: list[ClickEvent], rate: float | None
) -> tuple[_Timing, dict[str, tuple[int, int]] | None]:
    """Produce live (when `rate` is given) once the scorer serves, then wait until the group's lag is gone.

    Returns the phase's timing and, for a live phase, each user's last produced (partition, offset)."""
    producing = None
    if rate is not None:
        await _wait_assigned(scorer, settings.topic)
        producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, settings.topic, events, rate))
    produce_started = time.perf_counter()
    t_first = t_produced = None
    while True:
        await asyncio.sleep(0.25)
        if task.done():
            task.result()
        if t_first is None and scorer.stats.batches:
            t_first = time.perf_counter()
        if producing is not None and not producing.done():
            continue
        if t_produced is None:
            t_produced = time.perf_counter()
        lag = await group_lag(settings.kafka_bootstrap, settings.topic, settings.group_id)
        if lag and sum(lag.values()) == 0:
            break
    timing = _Timing(t_first, produce_started, t_produced, time.perf_counter())
    return timing, None if producing is None else producing.result()


async def phase_result(
    scorer: Scorer,
    store: Store,
    topic: str,
    events: int,
    rate: float | None,
    timing: _Timing,
    last: dict[str, tuple[int, int]],
    cpu: CpuUse | None = None,
) -> Phase:
    st = scorer.stats
    lat = sorted(ms for _, ms in scorer.latencies)
    began = timing.produce_started if rate is not None or timing.first_batch is None else timing.first_batch
    took = timing.end - began
    p99 = percentile(lat, 99)
    drain_after_s = round(timing.end - (timing.produced or timing.end), 2)
    return Phase(
        events=events,
        rate_target=rate,
        seconds=round(took, 2),
        events_per_s=round(st.events / took, 1),
        pairs_per_s=round(st.pairs / took, 1),
        scorings=st.lists_written + st.stale_skipped,
        coalesced=st.coalesced,
        dlq=st.dlq,
        lost=events - st.events - st.dlq,
        users_not_reflected=await count_not_reflected(store, topic, last),
        latency_ms=Latency(p50=percentile(lat, 50), p99=p99, max=round(lat[-1], 1) if lat else None),
        drained_s_after_last_send=drain_after_s if rate else None,
        kept_up=bool(rate and p99 is not None and p99 <= P99_LIMIT_MS and drain_after_s <= DRAIN_LIMIT_S),
        stage_s={k: round(v, 2) for k, v in st.stage_s.items()},
        latency_split_ms=latency_split(scorer.recorder.latency_parts),
        retrieve_ms=percentiles(list(scorer.recorder.retrieve_ms)) if scorer.tables.indexed else None,
        cpu=cpu,
        batches=batch_times(scorer.recorder.batch_times),
    )


async def _ladder(run: Callable[[float], Awaitable[Phase]], first_rate: float, steps: int) -> list[Phase]:
    """Live phases from `first_rate` (`bench.ladder.climb`), each logged."""

    async def logged(rate: float) -> Phase:
        step = await run(rate)
        log.info("ladder %.1f ev/s: p99 %s ms, kept up: %s", rate, step.latency_ms.p99, step.kept_up)
        return step

    return await climb(logged, first_rate, steps)


async def bench_stream(
    home: Path,
    model_dir: Path,
    *,
    events: int = 3000,
    share: float = 0.8,
    live_events: int | None = None,
    steps: int = 8,
    with_tables: bool = False,
    shadow_sample: float | None = None,
    **scorer_settings: Any,
) -> StreamBench:
    """Run the phases and return the figures (see the module docstring). `scorer_settings` override the
    scorer's settings (e.g. rerank_top=20); the environment's RANKSTREAM_* apply otherwise."""
    info = stack.up(home / "stack")
    prepared = prepare(None, home / "data")
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    base = Settings(kafka_bootstrap=info.bootstrap, redis_url=redis_url, model_dir=model_dir, **scorer_settings)
    # The shares `rankstream load` writes, reseeded per phase; the title vectors too, with retrieval on.
    vectors = await embed_catalog(base, prepared.catalog) if base.text_candidates or base.merge_dir else None
    tables = (prepared.catalog, seeded(prepared, 4), vectors)
    ranker = serving_loader(base)(model_dir)
    client = connect_from_settings(base)
    evs = split_events(home / "data", "test", None)
    live = evs[events:][:live_events]

    tables_log = None
    if with_tables:
        tables_log = home / "bench-stream"
        tables_log.mkdir(parents=True, exist_ok=True)

    def live_phase(name: str, shadow: _ShadowRun | None = None) -> Callable[[float], Awaitable[Phase]]:
        return lambda rate: run_phase(name, base, ranker, client, tables, live, rate, tables_log, shadow)

    try:
        backlog = await run_phase("max", base, ranker, client, tables, evs[:events], None, tables_log)
        ladder = await _ladder(live_phase("step"), round(backlog.events_per_s * 0.5, 1), steps)
        passed = [s.rate_target for s in ladder if s.kept_up and s.rate_target is not None]
        sustained = max(passed) if passed else ladder[0].rate_target
        assert sustained is not None  # every ladder phase has a rate
        fixed = await live_phase("fixed")(round(sustained * share, 1))
        cost = None
        if shadow_sample is not None:
            # A second session of the same files, loaded and warmed up as a replica loads a shadow version.
            twin = Ranker.load(model_dir, threads=1, batch_size=base.score_batch_size, spin=False)
            warm_up(twin, list(tables[0].values())[:50])
            run = _ShadowRun(twin, shadow_sample)
            with_shadow = await live_phase("shadow", run)(round(sustained * share, 1))
            after = await live_phase("fixed-again")(round(sustained * share, 1))
            cost = shadow_cost(shadow_sample, fixed, with_shadow, after, run.scored, run.skipped)
    finally:
        await client.aclose()
    return StreamBench(
        model_version=ranker.version,
        model_dir=str(model_dir),
        method_chain=list(ranker.manifest.method_chain),
        candidates_per_user=base.candidates,
        batch=BatchShape(max_records=base.batch_max_records, linger_ms=base.batch_linger_ms),
        score_chunk_users=base.score_chunk_users,
        rerank_top=rerank_top_for(base, ranker),
        user_quiet_ms=base.user_quiet_ms,
        live_events=len(live),
        threads=base.threads,
        score_lanes=base.score_lanes,
        max=backlog,
        ladder=ladder,
        max_sustained_events_per_s=sustained if passed else None,
        fixed_share=share,
        fixed=fixed,
        tables_job=with_tables,
        shadow=cost,
    )


def shadow_cost(
    sample: float, before: Phase, with_shadow: Phase, after: Phase, scored: int, skipped: int
) -> ShadowCost:
    """The shadow phase's p99 over the mean of the phases without it on either side."""
    base = [p.latency_ms.p99 for p in (before, after) if p.latency_ms.p99 is not None]
    shadowed = with_shadow.latency_ms.p99
    ratio = round(shadowed / (sum(base) / len(base)), 3) if base and shadowed is not None else None
    return ShadowCost(sample, with_shadow, after, ratio, scored, skipped)


def format_bench(result: StreamBench) -> str:
    """The figures as a table for a person; `result.to_json()` is the machine form."""
    rows = [f"model {result.model_version} ({' -> '.join(result.method_chain)})"]
    top = result.rerank_top or result.candidates_per_user
    rows.append(
        f"{result.candidates_per_user} candidates per user, {top} cross-encoded; lists written every "
        f"{result.score_chunk_users} users; users held until quiet for {result.user_quiet_ms} ms; "
        f"{result.score_lanes} model calls in flight of {result.threads} ORT threads each; "
        f"{result.live_events} events per live phase"
    )
    rows.append(
        f"{'phase':<12} {'events':>7} {'ev/s':>8} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'coalesced':>9} {'lost':>5} {'dlq':>4} {'wait p50/p99':>13} {'score p50/p99':>13} {'cpu busy/steal/own':>19}"
    )
    phases = [("backlog", result.max)] + [(f"@{p.rate_target}", p) for p in result.ladder]
    phases.append((f"80%@{result.fixed.rate_target}", result.fixed))
    if (cost := result.shadow) is not None:
        phases += [(f"+shadow {cost.sample:.0%}", cost.with_shadow), ("80% again", cost.without_after)]
    for name, p in phases:
        lat, split = p.latency_ms, p.latency_split_ms
        waiting = f"{split.waiting.p50}/{split.waiting.p99}"
        scoring = f"{split.scoring.p50}/{split.scoring.p99}"
        cpu = "-" if p.cpu is None else p.cpu.brief()
        rows.append(
            f"{name:<12} {p.events:>7} {p.events_per_s:>8} {p.pairs_per_s:>8} {lat.p50!s:>8} "
            f"{lat.p99!s:>8} {p.coalesced:>9} {p.lost:>5} {p.dlq:>4} {waiting:>13} {scoring:>13} {cpu:>19}"
            + ("" if p.rate_target is None else f"  kept up: {p.kept_up}")
        )
    rows.append(f"maximum sustained: {result.max_sustained_events_per_s} events/s (p99 <= {P99_LIMIT_MS:.0f} ms)")
    rows.append(f"time per stage (s), backlog phase: {result.max.stage_s}")
    if (bt := result.fixed.batches) is not None:
        rows.append(
            f"batches, 80% phase: {bt.batches}; poll p50/p99 {bt.poll_ms.p50}/{bt.poll_ms.p99} ms, processed in "
            f"{bt.process_ms.p50}/{bt.process_ms.p99} ms, records {bt.records.p50}/{bt.records.p99}"
        )
    if (r := result.fixed.retrieve_ms) is not None:
        rows.append(f"text retrieval per scored user, 80% phase: p50 {r.p50} / p99 {r.p99} ms")
    if cost is not None:
        rows.append(
            f"shadow at {cost.sample:.0%}: p99 x{cost.p99_ratio} of the mean without it; "
            f"{cost.shadow_scored_users} users shadow-scored, {cost.shadow_skipped_users} skipped "
            "(busy or over its share)"
        )
    return "\n".join(rows)
