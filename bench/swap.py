"""`rankstream bench swap`: replica processes under load while the active model version flips every N seconds.

Each replica is a `rankstream serve` process (bench/replicas.py), configured through RANKSTREAM_*
variables as a deployment configures it, following a registry of two real artifacts; one consumer group.
Once every replica is ready, and unless a rate is given, a ladder finds the fleet's own maximum
sustained rate while it serves the first version, as `bench stream`'s ladder finds one scorer's: each
step produces the same test-period events at its rate, from `start` up by `STEP_UP` while the fleet
keeps up (or down by `STEP_DOWN` while the first rate fails), and waits for the lag to be gone; a step
is kept up when that took at most `DRAIN_LIMIT_S` after its last send and the p99 of the lists seen in
Redis during it is at most `P99_LIMIT_MS`. Then the swap phase: the test period at the given rate, or
the ladder's events again and again at `share` of the highest rate kept up (the same traffic the rate
was found on), for the whole phase, and every `every_s` the other version is promoted. Measured from
outside the replicas: lost events (their exit stats, which cover the ladder too, against everything
produced, and a reference of each user's last event), events scored by each version, p99 event -> Redis
latency of the lists seen in Redis (bench/lists.py) during the swap phase, in steady state and inside
swap windows (from a promote to `_WINDOW_TAIL_S` after the last replica reported serving it), the
largest replica's RSS after the first and the last swap, and the time from each promote to every replica
serving it.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from rankstream.bench.ladder import climb, judge_step, ladder_rows, replayed, sustained, written_between
from rankstream.bench.latency import percentile
from rankstream.bench.lists import ListSample, ListWatch, split_by_windows
from rankstream.bench.replicas import Replica, free_port, replica_env, spawn, stop_all, wait_ready
from rankstream.bench.results import BySwap, Convergence, LadderStep, Rss, SwapBench
from rankstream.bench.stream import count_not_reflected, produce_events
from rankstream.data.live_replay import seeded
from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.livestore import seed
from rankstream.stream.recorder import Stats
from rankstream.stream.redis_client import RedisClient
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 2
_WINDOW_TAIL_S = 1.0
_SETTLE_S = 3.0  # after every replica is ready: the group's last rebalance is not part of the steady state


def largest_rss(replicas: list[Replica]) -> float:
    """RSS (MiB) of the largest replica: memory limits and leaks are per process."""
    return round(max(r.rss_mib() for r in replicas), 1)


@dataclass
class _Swaps:
    """What the swap loop observed: each swap window, each convergence time, RSS along the way."""

    rss_start: float
    windows: list[tuple[float, float]] = field(default_factory=list)
    converge_s: list[float] = field(default_factory=list)
    rss_series: list[float] = field(default_factory=list)  # after each swap: a leak grows steadily, a warm-up settles


def bench_settings(home: Path, name: str) -> Settings:
    """Settings on the local stack (started if needed) for a fresh `name-<ms>` topic, its DLQ and group,
    in the benchmarks' own Redis database."""
    info = stack.up(home / "stack")
    topic = f"{name}-{int(time.time() * 1000)}"
    return Settings(
        kafka_bootstrap=info.bootstrap,
        redis_url=info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}",
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id=f"g-{topic}",
    )


async def open_registry(
    settings: Settings, home: Path, models: list[Path], name: str = "bench-swap", *, distinct: int = 2
) -> tuple[Store, Registry, list[str]]:
    """A flushed bench database with the tables loaded, and a fresh registry of `models`, the first active
    (ConfigError unless they hold at least `distinct` versions)."""
    prepared = prepare(None, home / "data")
    store = Store.from_settings(settings)
    await store.client.flushdb()
    await store.load_catalog(prepared.catalog)
    tables = seeded(prepared, 4)
    await seed(store.client, settings.topic, tables.shares, tables.params)
    root = home / name / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root, store.client)
    versions = [registry.add(m) for m in models]
    if len(set(versions)) < distinct:
        await store.close()
        raise ConfigError(
            f"{name.replace('-', ' ')} needs two different versions, got {versions}; pass two distinct artifacts"
        )
    await registry.activate(versions[0], "bench")
    return store, registry, versions


async def _all_serving(registry: Registry, replicas: list[Replica], version: str) -> bool:
    served = await registry.serving()
    return all(served.get(r.name, {}).get("version") == version for r in replicas)


async def _swap_every(
    registry: Registry, replicas: list[Replica], versions: list[str], swaps: int, every_s: float
) -> _Swaps:
    """Promote the other version every `every_s` and time until every replica reports serving it."""
    seen = _Swaps(rss_start=largest_rss(replicas))
    for k in range(swaps):
        await asyncio.sleep(every_s)
        target = versions[(k + 1) % 2]
        t0 = time.time()
        await registry.promote(target)
        # Polling is the measurement here, so its interval bounds the error of each switch time.
        while not await _all_serving(registry, replicas, target):
            for r in replicas:
                r.check_running()
            await asyncio.sleep(0.02)
        t1 = time.time()
        seen.converge_s.append(t1 - t0)
        seen.windows.append((t0, t1 + _WINDOW_TAIL_S))
        log.info("swap %d/%d -> %s: all %d replicas serving after %.2fs", k + 1, swaps, target, len(replicas), t1 - t0)
        seen.rss_series.append(largest_rss(replicas))
    return seen


async def drained(settings: Settings, fleet: Sequence[Replica] = ()) -> float:
    """When the group's lag was seen gone (unix s); raise if a replica of `fleet` exited meanwhile."""
    while True:
        lag = await group_lag(settings.kafka_bootstrap, settings.topic, settings.group_id)
        if lag and sum(lag.values()) == 0:
            return time.time()
        for r in fleet:
            r.check_running()
        # Often enough to tell a ladder step that drained within DRAIN_LIMIT_S from one that did not.
        await asyncio.sleep(0.25)


def spawn_fleet(settings: Settings, registry: Registry, replicas: int, folder: Path, **extra: object) -> list[Replica]:
    """`replicas` serve processes on the registry; each gets its share of the machine's threads."""
    threads = max(settings.threads // replicas, 1)
    common = {
        "kafka_bootstrap": settings.kafka_bootstrap,
        "redis_url": settings.redis_url,
        "model_dir": registry.root,
        "model_poll_s": 1.0,
        "topic": settings.topic,
        "dlq_topic": settings.dlq_topic,
        "group_id": settings.group_id,
        "threads": threads,
    } | extra
    return [spawn(f"bench-{i}", replica_env(dict(os.environ), free_port(), **common), folder) for i in range(replicas)]


@dataclass(frozen=True)
class _Load:
    """The swap phase's plan: the events to produce, at what rate, and the promotions between the versions."""

    events: list[ClickEvent]
    rate: float
    versions: list[str]
    swaps: int
    every_s: float


@dataclass(frozen=True)
class _Climb:
    """The ladder's plan: the events every step produces, its first rate and at most how many steps."""

    events: list[ClickEvent]
    start: float
    steps: int


@dataclass(frozen=True)
class _Found:
    """What the ladder found: its steps, the highest rate kept up, and the share of it the swaps ran at."""

    steps: list[LadderStep]
    sustained: float
    share: float


def last_offsets(runs: Iterable[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """Each user's last (partition, offset) over runs produced one after the other on one topic."""
    last: dict[str, tuple[int, int]] = {}
    for run in runs:
        last.update(run)
    return last


def count_lost(produced: int, stats: Sequence[Stats]) -> int:
    """Events produced that no replica scored or dead-lettered, from the replicas' totals."""
    # Replays after a rebalance may score an event twice; lost counts events never scored.
    return max(produced - sum(st.events + st.dlq for st in stats), 0)


@contextlib.asynccontextmanager
async def _watching(client: RedisClient, events: list[ClickEvent]) -> AsyncIterator[ListWatch]:
    """The lists of the users of `events`, watched until the block ends, then read once more."""
    watch = ListWatch(client, sorted({e.user_id for e in events}))
    done = asyncio.Event()
    task = asyncio.create_task(watch.run(done))
    try:
        yield watch
    finally:
        done.set()
        await asyncio.gather(task, return_exceptions=True)


class _Run:
    """The fleet under load: the ladder (without a given rate), then the swap phase. Keeps the last
    offsets each of them produced, for the check that every user's list reflects their last event."""

    def __init__(self, settings: Settings, registry: Registry, fleet: list[Replica]) -> None:
        self.settings = settings
        self.registry = registry
        self.fleet = fleet
        self.lasts: list[dict[str, tuple[int, int]]] = []

    async def ready(self) -> None:
        await wait_ready(self.fleet)
        await asyncio.sleep(_SETTLE_S)

    async def ladder(self, plan: _Climb) -> list[LadderStep]:
        return await climb(partial(self._step, plan.events), plan.start, plan.steps)

    async def _step(self, events: list[ClickEvent], rate: float) -> LadderStep:
        """Produce `events` at `rate`, wait for the lag to be gone, and judge the step."""
        started = time.time()
        async with _watching(self.registry.client, events) as watch:
            self.lasts.append(await produce_events(self.settings.kafka_bootstrap, self.settings.topic, events, rate))
            sent = time.time()
            drained_at = await drained(self.settings, self.fleet)
        step = judge_step(rate, len(events), watch.samples, started=started, sent=sent, drained=drained_at)
        log.info(
            "ladder %.1f ev/s: p99 %s ms over %d lists, lag gone %.2fs after the last send, kept up: %s",
            rate,
            step.p99_ms,
            step.lists,
            step.drained_s_after_last_send,
            step.kept_up,
        )
        return step

    async def swaps(self, load: _Load) -> tuple[_Swaps, list[ListSample], LadderStep]:
        """Produce at the rate while promoting every `every_s`; watch the lists until the lag is gone.
        Returns what the swaps did, the lists written during the phase (not the ladder's), and the phase
        judged as a ladder step is: a fleet that fell behind over the whole phase makes its ratio moot."""
        started = time.time()
        s = self.settings
        async with _watching(self.registry.client, load.events) as watch:
            producing = asyncio.create_task(produce_events(s.kafka_bootstrap, s.topic, load.events, load.rate))
            try:
                seen = await _swap_every(self.registry, self.fleet, load.versions, load.swaps, load.every_s)
                self.lasts.append(await producing)
                sent = time.time()
                drained_at = await drained(self.settings, self.fleet)
            finally:
                if not producing.done():
                    producing.cancel()
                    await asyncio.gather(producing, return_exceptions=True)
        phase = judge_step(load.rate, len(load.events), watch.samples, started=started, sent=sent, drained=drained_at)
        return seen, written_between(watch.samples, started), phase


async def bench_swap(
    home: Path,
    models: list[Path],
    *,
    rate: float | None = None,
    swaps: int = 20,
    every_s: float = 30.0,
    replicas: int = 2,
    share: float = 0.8,
    ladder_events: int | None = None,
    ladder_start: float = 800.0,
    ladder_steps: int = 8,
) -> SwapBench:
    """Run replica processes under load through `swaps` promotions and return the figures (module docstring).

    Args:
        rate: events/s of the swap phase, over the test period; None: `share` of the fleet's maximum
            sustained rate, found first by a ladder of `ladder_steps` steps at most, of the period's first
            `ladder_events` events each (None: the whole period), from `ladder_start`; the swap phase then
            replays those events.

    Raises:
        JobError: no rate of the ladder was kept up.
    """
    settings = bench_settings(home, "bench-swap")
    topic = settings.topic
    store, registry, versions = await open_registry(settings, home, models)
    try:
        await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
        evs = split_events(home / "data", "test", None)
        fleet = spawn_fleet(settings, registry, replicas, home / "bench-swap" / "replicas")
        run = _Run(settings, registry, fleet)
        try:
            await run.ready()
            found = None
            if rate is None:
                # The swaps replay the ladder's events: a rate found on one stretch of the period does
                # not hold on another (the first run measured with the whole period after a ladder on
                # its first days had a steady p99 of 1.4 s at "80%", beyond the ladder's own limit).
                evs = replayed(evs, ladder_events or len(evs))
                steps = await run.ladder(_Climb(evs, ladder_start, ladder_steps))
                found = _Found(steps, sustained(steps), share)
                rate = round(found.sustained * share, 1)
                log.info("the replicas sustain %.1f ev/s; swaps at %.1f ev/s", found.sustained, rate)
            load = _Load(replayed(evs, int(rate * (swaps + 1) * every_s)), rate, versions, swaps, every_s)
            seen, samples, phase = await run.swaps(load)
        finally:
            stop_all(fleet)
        stats = [r.stats() for r in fleet]
        not_reflected = await count_not_reflected(store, topic, last_offsets(run.lasts))
    finally:
        await store.close()
    return replace(_result(stats, samples, seen, load, not_reflected, found), swap_phase=phase)


def _result(
    stats: list[Stats], samples: list[ListSample], seen: _Swaps, load: _Load, not_reflected: int, found: _Found | None
) -> SwapBench:
    steady, in_window = split_by_windows(samples, seen.windows)
    by_version: Counter[str] = Counter()
    for st in stats:
        by_version.update(st.events_by_version)
    ladder = found.steps if found is not None else []
    ladder_events = sum(s.events for s in ladder)
    conv = seen.converge_s
    return SwapBench(
        versions=load.versions,
        replicas=len(stats),
        rate=load.rate,
        swaps=len(conv),
        every_s=load.every_s,
        events=len(load.events),
        lost=count_lost(ladder_events + len(load.events), stats),
        users_not_reflected=not_reflected,
        events_by_version=dict(by_version),
        latency_p99_ms=BySwap(steady=percentile(steady, 99), swap_windows=percentile(in_window, 99)),
        latency_samples=BySwap(steady=len(steady), swap_windows=len(in_window)),
        rss_mib=Rss(
            start=seen.rss_start,
            after_first_swap=seen.rss_series[0] if seen.rss_series else None,
            after_last_swap=seen.rss_series[-1] if seen.rss_series else seen.rss_start,
            after_each_swap=seen.rss_series,
        ),
        publish_to_all_serving_s=Convergence(
            max=round(max(conv), 3) if conv else None,
            median=round(statistics.median(conv), 3) if conv else None,
        ),
        lists_by_version=dict(Counter(s.version for s in samples)),
        ladder=ladder,
        max_sustained_events_per_s=found.sustained if found is not None else None,
        share=found.share if found is not None else None,
        ladder_events=ladder_events,
    )


def format_swap(r: SwapBench) -> str:
    """The figures as a table for a person; `r.to_json()` is the machine form."""
    lat, rss, conv = r.latency_p99_ms, r.rss_mib, r.publish_to_all_serving_s
    rate = f"{r.rate} events/s"
    if r.share is not None:
        rate += f" ({r.share:.0%} of the {r.max_sustained_events_per_s} events/s they sustained on the ladder)"
    rows = [
        f"{r.swaps} swaps every {r.every_s}s between {' and '.join(r.versions)}, {r.replicas} replica processes, {rate}"
    ]
    if r.ladder:
        rows += ladder_rows(r.ladder)
        rows.append(f"events: {r.events} in the swap phase, {r.ladder_events} on the ladder; lost counts both")
    rows += [
        f"{'events':>8} {'lost':>5} {'not refl.':>9} {'p99 steady':>10} {'p99 swap':>9} "
        f"{'RSS 1st':>8} {'RSS last':>8} {'publish->all max s':>18}",
        f"{r.events:>8} {r.lost:>5} {r.users_not_reflected:>9} {lat.steady!s:>10} "
        f"{lat.swap_windows!s:>9} {rss.after_first_swap or 0:>8} {rss.after_last_swap:>8} "
        f"{conv.max!s:>18}",
        f"events by version{' (the ladder included)' if r.ladder else ''}: {r.events_by_version}",
        f"lists seen in Redis: {r.latency_samples.steady} in steady state, {r.latency_samples.swap_windows} "
        f"in swap windows; by the version that wrote them: {r.lists_by_version}",
    ]
    if r.swap_phase is not None:
        ph = r.swap_phase
        rows.append(
            f"swap phase as a ladder step: p99 {ph.p99_ms} ms, lag gone {ph.drained_s_after_last_send}s after the "
            f"last send, kept up: {ph.kept_up}"
        )
    return "\n".join(rows)
