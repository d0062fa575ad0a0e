"""`rankstream bench swap`: replicas under steady load while the active model version flips every N seconds.

Two scorer replicas (one consumer group, in this process) follow a registry of two real artifacts. Events
from the test period are produced at a fixed rate for the whole run; every `every_s` the other version is
promoted. Measured: lost events (against a reference of each user's last event), events scored by each
version, p99 event -> Redis latency in steady state and inside swap windows (from a promote to one second
after the last replica switched), process RSS after the first and after the last swap, and the time from
each promote to every replica serving it.
"""

import asyncio
import logging
import shutil
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from rankstream.bench.stream import count_not_reflected, produce_events
from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
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


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _p99(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=100)[98], 1) if len(values) > 100 else None


async def bench_swap(
    home: Path, models: list[Path], *, rate: float, swaps: int = 20, every_s: float = 30.0, replicas: int = 2
) -> dict[str, Any]:
    info = stack.up(home / "stack")
    prepared = prepare(None, home / "data")
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    topic = f"bench-swap-{int(time.time() * 1000)}"
    settings = Settings(
        kafka_bootstrap=info.bootstrap,
        redis_url=redis_url,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        group_id=f"g-{topic}",
    )
    client = aioredis.from_url(redis_url, decode_responses=True, **settings.redis_client_options())
    await client.flushdb()
    store = Store(client, ttl_s=settings.rec_ttl_s)
    await store.load_tables(prepared.catalog, prepared.neighbours, prepared.trending, prepared.item_stats)
    root = home / "bench-swap" / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root, client)
    versions = [registry.add(m) for m in models]
    if len(set(versions)) < 2:
        raise ValueError(f"bench swap needs two different versions, got {versions}")
    await registry.activate(versions[0], "bench")
    await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
    # Each replica uses its share of the 2 cores, as separate processes would be configured.
    load = partial(Ranker.load, threads=max(settings.threads // replicas, 1), batch_size=settings.score_batch_size)

    duration = (swaps + 1) * every_s
    evs = split_events(home / "data", "test", None)
    needed = int(rate * duration)
    events = (evs * (needed // len(evs) + 1))[:needed]  # the test period again if the run outlasts it

    scorers = [
        Scorer(settings, load(registry.path(versions[0])), store, latency_samples=1_000_000) for _ in range(replicas)
    ]
    followers = [ModelFollower(registry, s, load, replica=f"bench-{i}", poll_s=1.0) for i, s in enumerate(scorers)]
    for s in scorers:
        await s.start()
    running = [asyncio.create_task(s.run()) for s in scorers]
    following = [asyncio.create_task(f.run()) for f in followers]
    producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, topic, events, rate))
    windows: list[tuple[float, float]] = []
    converge_s: list[float] = []
    rss: dict[str, float] = {"start": rss_mib()}
    rss_series: list[float] = []  # after each swap: a leak grows steadily, a warm-up settles
    try:
        for k in range(swaps):
            await asyncio.sleep(every_s)
            target = versions[(k + 1) % 2]
            t0 = time.time()
            await registry.promote(target)
            # Polling is the measurement here, so its interval bounds the error of each switch time.
            while any(s.ranker.version != target for s in scorers):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            t1 = time.time()
            converge_s.append(t1 - t0)
            windows.append((t0, t1 + _WINDOW_TAIL_S))
            log.info("swap %d/%d -> %s: all %d replicas serving after %.2fs", k + 1, swaps, target, replicas, t1 - t0)
            rss_series.append(round(rss_mib(), 1))
            if k == 0:
                rss["after_first_swap"] = rss_series[-1]
        rss["after_last_swap"] = rss_mib()
        last = await producing
        while True:
            lag = await group_lag(settings.kafka_bootstrap, topic, settings.group_id)
            if lag and sum(lag.values()) == 0:
                break
            await asyncio.sleep(0.5)
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

    steady, in_window = [], []
    for s in scorers:
        for at, ms in s.latencies:
            (in_window if any(a <= at <= b for a, b in windows) else steady).append(ms)
    by_version: dict[str, int] = {}
    for s in scorers:
        for v, n in s.stats.events_by_version.items():
            by_version[v] = by_version.get(v, 0) + n
    scored = sum(s.stats.events + s.stats.dlq for s in scorers)
    result = {
        "versions": versions,
        "replicas": replicas,
        "rate": rate,
        "swaps": len(converge_s),
        "every_s": every_s,
        "events": len(events),
        # Replays after a rebalance may score an event twice; lost counts events never scored.
        "lost": max(len(events) - scored, 0),
        "users_not_reflected": await count_not_reflected(store, topic, last),
        "events_by_version": by_version,
        "latency_p99_ms": {"steady": _p99(steady), "swap_windows": _p99(in_window)},
        "latency_samples": {"steady": len(steady), "swap_windows": len(in_window)},
        "rss_mib": {k: round(v, 1) for k, v in rss.items()} | {"after_each_swap": rss_series},
        # The benchmark's own latency samples live in the same process: (time, ms) per event.
        "latency_samples_mib": round(sum(len(s.latencies) for s in scorers) * 120 / 2**20, 1),
        "publish_to_all_serving_s": {
            "max": round(max(converge_s), 3) if converge_s else None,
            "median": round(statistics.median(converge_s), 3) if converge_s else None,
        },
    }
    await client.aclose()
    return result


def format_swap(r: dict[str, Any]) -> str:
    lat, rss, conv = r["latency_p99_ms"], r["rss_mib"], r["publish_to_all_serving_s"]
    return "\n".join(
        [
            f"{r['swaps']} swaps every {r['every_s']}s between {' and '.join(r['versions'])}, "
            f"{r['replicas']} replicas, {r['rate']} events/s",
            f"{'events':>8} {'lost':>5} {'not refl.':>9} {'p99 steady':>10} {'p99 swap':>9} "
            f"{'RSS 1st':>8} {'RSS last':>8} {'publish->all max s':>18}",
            f"{r['events']:>8} {r['lost']:>5} {r['users_not_reflected']:>9} {lat['steady']!s:>10} "
            f"{lat['swap_windows']!s:>9} {rss.get('after_first_swap', 0):>8} {rss.get('after_last_swap', 0):>8} "
            f"{conv['max']!s:>18}",
            f"events by version: {r['events_by_version']}",
        ]
    )
