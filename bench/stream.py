"""`rankstream bench stream`: the scorer on the real Kafka and Redis, at the maximum rate and at a fixed one.

Phases on fresh topics, with a scorer in this process (one replica, as one `rankstream serve`):
- backlog: the first N test-period events are produced up front and drained: the drain rate. It
  overstates what the scorer sustains live, because a backlog lets it fold a user's many events into
  one scoring;
- ladder: the rest of the test period (or its first `live_events`) produced live at rising rates (from
  half the drain rate, x1.25 per step, or x0.8 down while the first rate fails); a rate is sustained
  when the scorer keeps up (lag gone within `_DRAIN_LIMIT_S` of the last send) and p99 event -> Redis
  stays under `_P99_LIMIT_MS`. The maximum sustained rate is the highest one that passed;
- fixed: the same events at a fixed share (80%) of the maximum sustained rate.
Every live phase replays the same events, so each rate meets the same traffic (stretches of the period
differ: more users with small baskets mean more scorings per event). A live phase starts producing once
its scorer owns its partitions, after a few idle seconds.
Event -> Redis latency runs from each Kafka record's time to the moment its list was written. Lost
events are checked against a reference: every user's list must reflect their last produced event.
"""

import asyncio
import logging
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.ranker import Ranker
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings
from rankstream.stream.signals import ItemStats
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 1  # a Redis database of its own, flushed per phase: the demo's lists are left alone
_DRAIN_LIMIT_S = 2.0
_P99_LIMIT_MS = 1000.0
_SETTLE_S = 3.0  # idle time before each phase, so one phase's aftermath (flushes, collections) is not the next's
Tables = tuple[dict[str, str], dict[str, list[str]], list[str], dict[str, ItemStats]]


async def produce_events(
    bootstrap: str, topic: str, events: list[ClickEvent], rate: float | None
) -> dict[str, tuple[int, int]]:
    """Send events from a separate process (a producer sharing the scorer's interpreter would steal its
    GIL and CPU, which no deployment does); return each user's last (partition, offset)."""
    records = [(ev.user_id, ev.to_bytes()) for ev in events]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await loop.run_in_executor(pool, _produce_blocking, bootstrap, topic, records, rate)


def _produce_blocking(
    bootstrap: str, topic: str, records: list[tuple[str, bytes]], rate: float | None
) -> dict[str, tuple[int, int]]:
    return asyncio.run(_send_all(bootstrap, topic, records, rate))


async def _send_all(
    bootstrap: str, topic: str, records: list[tuple[str, bytes]], rate: float | None
) -> dict[str, tuple[int, int]]:
    """Send (user, value) records at `rate`/s, or as fast as possible."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    last: dict[str, tuple[int, int]] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        futures = []
        for n, (user, value) in enumerate(records):
            futures.append((user, await producer.send(topic, key=user.encode(), value=value)))
            if rate:
                ahead = (n + 1) / rate - (loop.time() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for user, fut in futures:
            meta = await fut
            # Same key, same partition: later offsets are later events.
            if user not in last or meta.offset > last[user][1]:
                last[user] = (meta.partition, meta.offset)
    finally:
        await producer.stop()
    return last


async def count_not_reflected(store: Store, topic: str, last: dict[str, tuple[int, int]]) -> int:
    missing = 0
    for user, (partition, offset) in last.items():
        rec = await store.read_list(user)
        if rec is None or (rec.get("topic"), rec["partition"], rec["offset"]) != (topic, partition, offset):
            missing += 1
    return missing


async def _phase(
    name: str,
    base: Settings,
    ranker: Ranker,
    client: aioredis.Redis,
    tables: Tables,
    events: list[ClickEvent],
    rate: float | None,
) -> dict[str, Any]:
    topic = f"bench-{name}-{int(time.time() * 1000)}"
    settings = base.model_copy(update={"topic": topic, "dlq_topic": f"{topic}.dlq", "group_id": f"g-{topic}"})
    await asyncio.to_thread(create_topics, settings.kafka_bootstrap, {topic: 4, f"{topic}.dlq": 1})
    await client.flushdb()
    store = Store(client, ttl_s=base.rec_ttl_s)
    await store.load_tables(*tables)
    producing = None
    await asyncio.sleep(_SETTLE_S)
    if rate is None:
        last = await produce_events(settings.kafka_bootstrap, topic, events, None)
    scorer = Scorer(settings, ranker, store, latency_samples=1_000_000)
    await scorer.start()
    task = asyncio.create_task(scorer.run())
    t_first = None
    t_produced = None
    try:
        if rate is not None:
            # A serving replica is measured, not its start: events flow once it owns its partitions.
            for _ in range(1200):
                if scorer.assignment():
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the scorer got no partitions of {topic} within 60 s")
            producing = asyncio.create_task(produce_events(settings.kafka_bootstrap, topic, events, rate))
        produce_started = time.perf_counter()
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
            lag = await group_lag(settings.kafka_bootstrap, topic, settings.group_id)
            if lag and sum(lag.values()) == 0:
                break
        t_end = time.perf_counter()
        if producing is not None:
            last = producing.result()
    finally:
        scorer.stop()
        await task
        await scorer.close()
    st = scorer.stats
    lat = sorted(ms for _, ms in scorer.latencies)
    took = t_end - (t_first if rate is None else produce_started)
    p99 = round(statistics.quantiles(lat, n=100)[98], 1) if len(lat) > 100 else None
    drain_after_s = round(t_end - (t_produced or t_end), 2)
    return {
        "events": len(events),
        "rate_target": rate,
        "seconds": round(took, 2),
        "events_per_s": round(st.events / took, 1),
        "pairs_per_s": round(st.pairs / took, 1),
        "scorings": st.lists_written + st.stale_skipped,
        "coalesced": st.coalesced,
        "dlq": st.dlq,
        "lost": len(events) - st.events - st.dlq,
        "users_not_reflected": await count_not_reflected(store, topic, last),
        "latency_ms": {
            "p50": round(statistics.quantiles(lat, n=100)[49], 1) if len(lat) > 100 else None,
            "p99": p99,
            "max": round(lat[-1], 1) if lat else None,
        },
        "drained_s_after_last_send": drain_after_s if rate else None,
        "kept_up": bool(rate and p99 is not None and p99 <= _P99_LIMIT_MS and drain_after_s <= _DRAIN_LIMIT_S),
        "stage_s": {k: round(v, 2) for k, v in st.stage_s.items()},
    }


async def bench_stream(
    home: Path,
    model_dir: Path,
    *,
    events: int = 3000,
    share: float = 0.8,
    live_events: int | None = None,
    steps: int = 8,
    **scorer_settings: Any,
) -> dict[str, Any]:
    """Run the phases and return the figures (see the module docstring). `scorer_settings` override the
    scorer's settings (e.g. rerank_top=20); the environment's RANKSTREAM_* apply otherwise."""
    info = stack.up(home / "stack")
    prepared = prepare(None, home / "data")
    tables = (prepared.catalog, prepared.neighbours, prepared.trending, prepared.item_stats)
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    base = Settings(kafka_bootstrap=info.bootstrap, redis_url=redis_url, model_dir=model_dir, **scorer_settings)
    ranker = Ranker.load(model_dir, threads=base.threads, batch_size=base.score_batch_size)
    client = aioredis.from_url(redis_url, decode_responses=True, **base.redis_client_options())
    evs = split_events(home / "data", "test", None)

    live = evs[events:][:live_events]

    try:
        backlog = await _phase("max", base, ranker, client, tables, evs[:events], None)
        ladder = []
        rate = round(backlog["events_per_s"] * 0.5, 1)
        # Up by 1.25x while the scorer keeps up; if the first rate already fails, down by 0.8x until one passes.
        for _ in range(steps):
            step = await _phase("step", base, ranker, client, tables, live, rate)
            ladder.append(step)
            log.info("ladder %.1f ev/s: p99 %s ms, kept up: %s", rate, step["latency_ms"]["p99"], step["kept_up"])
            going_up = ladder[0]["kept_up"]
            if step["kept_up"] != going_up:
                break
            rate = round(rate * (1.25 if going_up else 0.8), 1)
        passed = [s["rate_target"] for s in ladder if s["kept_up"]]
        sustained = max(passed) if passed else ladder[0]["rate_target"]
        fixed_rate = round(sustained * share, 1)
        fixed = await _phase("fixed", base, ranker, client, tables, live, fixed_rate)
    finally:
        await client.aclose()
    return {
        "model_version": ranker.version,
        "model_dir": str(model_dir),
        "method_chain": list(ranker.manifest.method_chain),
        "candidates_per_user": base.candidates,
        "batch": {"max_records": base.batch_max_records, "linger_ms": base.batch_linger_ms},
        "score_chunk_users": base.score_chunk_users,
        "rerank_top": base.rerank_top,
        "user_quiet_ms": base.user_quiet_ms,
        "live_events": len(live),
        "threads": base.threads,
        "max": backlog,
        "ladder": ladder,
        "max_sustained_events_per_s": sustained if passed else None,
        "fixed_share": share,
        "fixed": fixed,
    }


def format_bench(result: dict[str, Any]) -> str:
    rows = [f"model {result['model_version']} ({' -> '.join(result['method_chain'])})"]
    top = result["rerank_top"] or result["candidates_per_user"]
    rows.append(
        f"{result['candidates_per_user']} candidates per user, {top} cross-encoded; lists written every "
        f"{result['score_chunk_users']} users; users held until quiet for {result['user_quiet_ms']} ms; "
        f"{result['threads']} ORT threads; {result['live_events']} events per live phase"
    )
    rows.append(
        f"{'phase':<12} {'events':>7} {'ev/s':>8} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'coalesced':>9} {'lost':>5} {'dlq':>4}"
    )
    phases = [("backlog", result["max"])] + [(f"@{p['rate_target']}", p) for p in result["ladder"]]
    for name, p in [*phases, (f"80%@{result['fixed']['rate_target']}", result["fixed"])]:
        lat = p["latency_ms"]
        rows.append(
            f"{name:<12} {p['events']:>7} {p['events_per_s']:>8} {p['pairs_per_s']:>8} {lat['p50']!s:>8} "
            f"{lat['p99']!s:>8} {p['coalesced']:>9} {p['lost']:>5} {p['dlq']:>4}"
            + ("" if p["rate_target"] is None else f"  kept up: {p['kept_up']}")
        )
    rows.append(f"maximum sustained: {result['max_sustained_events_per_s']} events/s (p99 <= {_P99_LIMIT_MS:.0f} ms)")
    rows.append(f"time per stage (s), backlog phase: {result['max']['stage_s']}")
    return "\n".join(rows)
