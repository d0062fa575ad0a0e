"""`rankstream bench swap`: replicas under steady load while the active model version flips every N seconds.

Two scorer replicas (one consumer group, in this process) follow a registry of two real artifacts. Events
from the test period are produced at a fixed rate for the whole run; every `every_s` the other version is
promoted. Measured: lost events (against a reference of each user's last event), events scored by each
version, p99 event -> Redis latency in steady state and inside swap windows (from a promote to
`_WINDOW_TAIL_S` after the last replica switched), process RSS after the first and after the last swap,
and the time from each promote to every replica serving it.
"""

import asyncio
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rankstream.bench.results import BySwap, Convergence, Rss, SwapBench
from rankstream.bench.stream import count_not_reflected, percentile, produce_events
from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.stream.errors import ConfigError
from rankstream.stream.follow import ModelFollower
from rankstream.stream.lag import group_lag
from rankstream.stream.ranker import Ranker
from rankstream.stream.registry import Registry
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 2
_WINDOW_TAIL_S = 1.0
# Each latency sample is a (time, ms) pair held in this process: its size, to report their memory.
_SAMPLE_BYTES = 120


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class _Swaps:
    """What the swap loop observed: each swap window, each convergence time, RSS along the way."""

    windows: list[tuple[float, float]] = field(default_factory=list)
    converge_s: list[float] = field(default_factory=list)
    rss_start: float = field(default_factory=rss_mib)
    rss_series: list[float] = field(default_factory=list)  # after each swap: a leak grows steadily, a warm-up settles
    rss_after_last: float = 0.0


async def _open_registry(settings: Settings, home: Path, models: list[Path]) -> tuple[Store, Registry, list[str]]:
    """A flushed bench database with the tables loaded, and a fresh registry of `models`, the first active."""
    prepared = prepare(None, home / "data")
    store = Store.from_settings(settings)
    await store.client.flushdb()
    await store.load_tables(prepared.catalog, prepared.neighbours, prepared.trending, prepared.item_stats)
    root = home / "bench-swap" / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root, store.client)
    versions = [registry.add(m) for m in models]
    if len(set(versions)) < 2:
        await store.close()
        raise ConfigError(f"bench swap needs two different versions, got {versions}; pass two distinct artifacts")
    await registry.activate(versions[0], "bench")
    return store, registry, versions


async def _swap_every(
    registry: Registry, scorers: list[Scorer], versions: list[str], swaps: int, every_s: float
) -> _Swaps:
    """Promote the other version every `every_s` and time until every replica serves it."""
    seen = _Swaps()
    for k in range(swaps):
        await asyncio.sleep(every_s)
        target = versions[(k + 1) % 2]
        t0 = time.time()
        await registry.promote(target)
        # Polling is the measurement here, so its interval bounds the error of each switch time.
        while any(s.ranker.version != target for s in scorers):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        t1 = time.time()
        seen.converge_s.append(t1 - t0)
        seen.windows.append((t0, t1 + _WINDOW_TAIL_S))
        log.info("swap %d/%d -> %s: all %d replicas serving after %.2fs", k + 1, swaps, target, len(scorers), t1 - t0)
        seen.rss_series.append(round(rss_mib(), 1))
    seen.rss_after_last = rss_mib()
    return seen


async def _drained(settings: Settings) -> None:
    while True:
        lag = await group_lag(settings.kafka_bootstrap, settings.topic, settings.group_id)
        if lag and sum(lag.values()) == 0:
            return
        await asyncio.sleep(0.5)


async def bench_swap(
    home: Path, models: list[Path], *, rate: float, swaps: int = 20, every_s: float = 30.0, replicas: int = 2
) -> SwapBench:
    """Run replicas under load through `swaps` promotions and return the figures (module docstring)."""
    info = stack.up(home / "stack")
    topic = f"bench-swap-{int(time.time() * 1000)}"
    settings = Settings(
        kafka_bootstrap=info.bootstrap,
        redis_url=info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}",
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id=f"g-{topic}",
    )
    store, registry, versions = await _open_registry(settings, home, models)
    try:
        await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
        # Each replica uses its share of the machine's threads, as separate processes would be configured.
        load = partial(Ranker.load, threads=max(settings.threads // replicas, 1), batch_size=settings.score_batch_size)
        evs = split_events(home / "data", "test", None)
        needed = int(rate * (swaps + 1) * every_s)
        events = (evs * (needed // len(evs) + 1))[:needed]  # the test period again if the run outlasts it
        scorers = [
            Scorer(settings, load(registry.path(versions[0])), store, latency_samples=1_000_000)
            for _ in range(replicas)
        ]
        followers = [ModelFollower(registry, s, load, replica=f"bench-{i}", poll_s=1.0) for i, s in enumerate(scorers)]
        for s in scorers:
            await s.start()
        running = [asyncio.create_task(s.run()) for s in scorers]
        following = [asyncio.create_task(f.run()) for f in followers]
        producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, topic, events, rate))
        try:
            seen = await _swap_every(registry, scorers, versions, swaps, every_s)
            last = await producing
            await _drained(settings)
        finally:
            for f in followers:
                f.stop()
            for t in following:
                t.cancel()
            for s in scorers:
                s.stop()
            await asyncio.gather(*running, return_exceptions=True)
            await asyncio.gather(*following, return_exceptions=True)
            for s in scorers:
                await s.close()
        not_reflected = await count_not_reflected(store, topic, last)
    finally:
        await store.close()
    return _result(scorers, seen, versions, rate, every_s, len(events), not_reflected)


def _result(
    scorers: list[Scorer],
    seen: _Swaps,
    versions: list[str],
    rate: float,
    every_s: float,
    events: int,
    not_reflected: int,
) -> SwapBench:
    steady: list[float] = []
    in_window: list[float] = []
    for s in scorers:
        for at, ms in s.latencies:
            (in_window if any(a <= at <= b for a, b in seen.windows) else steady).append(ms)
    by_version: dict[str, int] = {}
    for s in scorers:
        for v, n in s.stats.events_by_version.items():
            by_version[v] = by_version.get(v, 0) + n
    scored = sum(s.stats.events + s.stats.dlq for s in scorers)
    conv = seen.converge_s
    return SwapBench(
        versions=versions,
        replicas=len(scorers),
        rate=rate,
        swaps=len(conv),
        every_s=every_s,
        events=events,
        # Replays after a rebalance may score an event twice; lost counts events never scored.
        lost=max(events - scored, 0),
        users_not_reflected=not_reflected,
        events_by_version=by_version,
        latency_p99_ms=BySwap(steady=percentile(steady, 99), swap_windows=percentile(in_window, 99)),
        latency_samples=BySwap(steady=len(steady), swap_windows=len(in_window)),
        rss_mib=Rss(
            start=round(seen.rss_start, 1),
            after_first_swap=seen.rss_series[0] if seen.rss_series else None,
            after_last_swap=round(seen.rss_after_last, 1),
            after_each_swap=seen.rss_series,
        ),
        # The benchmark's own latency samples live in the same process.
        latency_samples_mib=round(sum(len(s.latencies) for s in scorers) * _SAMPLE_BYTES / 2**20, 1),
        publish_to_all_serving_s=Convergence(
            max=round(max(conv), 3) if conv else None,
            median=round(statistics.median(conv), 3) if conv else None,
        ),
    )


def format_swap(r: SwapBench) -> str:
    """The figures as a table for a person; `r.to_json()` is the machine form."""
    lat, rss, conv = r.latency_p99_ms, r.rss_mib, r.publish_to_all_serving_s
    return "\n".join(
        [
            f"{r.swaps} swaps every {r.every_s}s between {' and '.join(r.versions)}, "
            f"{r.replicas} replicas, {r.rate} events/s",
            f"{'events':>8} {'lost':>5} {'not refl.':>9} {'p99 steady':>10} {'p99 swap':>9} "
            f"{'RSS 1st':>8} {'RSS last':>8} {'publish->all max s':>18}",
            f"{r.events:>8} {r.lost:>5} {r.users_not_reflected:>9} {lat.steady!s:>10} "
            f"{lat.swap_windows!s:>9} {rss.after_first_swap or 0:>8} {rss.after_last_swap:>8} "
            f"{conv.max!s:>18}",
            f"events by version: {r.events_by_version}",
        ]
    )
