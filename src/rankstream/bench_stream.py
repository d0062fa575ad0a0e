"""`rankstream bench stream`: the scorer on the real Kafka and Redis, at the maximum rate and at a fixed one.

Two phases on fresh topics, with a scorer in this process (one replica, as one `rankstream serve`):
- max: the first N test-period events are produced up front; the scorer drains the backlog; the
  sustained rate is events / (time from its first batch to lag 0);
- fixed: events produced at a fixed share of that rate; event -> Redis latency from each Kafka record's
  time to the moment its list was written.
Lost events are checked against a reference: every user's list must reflect their last produced event.
"""

import asyncio
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from rankstream.data.prepare import prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.loading import split_events
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.ranker import Ranker
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 1  # a Redis database of its own, flushed per phase: the demo's lists are left alone
Tables = tuple[dict[str, str], dict[str, list[str]], list[str]]


async def _produce(
    bootstrap: str, topic: str, events: list[ClickEvent], rate: float | None
) -> dict[str, tuple[int, int]]:
    """Send events (at `rate`/s, or as fast as possible); return each user's last (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    last: dict[str, tuple[int, int]] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        futures = []
        for n, ev in enumerate(events):
            futures.append((ev.user_id, await producer.send(topic, key=ev.user_id.encode(), value=ev.to_bytes())))
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


async def _not_reflected(store: Store, topic: str, last: dict[str, tuple[int, int]]) -> int:
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
    if rate is None:
        last = await _produce(settings.kafka_bootstrap, topic, events, None)
    else:
        producing = asyncio.create_task(_produce(settings.kafka_bootstrap, topic, events, rate))
    scorer = Scorer(settings, ranker, store)
    await scorer.start()
    task = asyncio.create_task(scorer.run())
    t_first = None
    produce_started = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.25)
            if task.done():
                task.result()
            if t_first is None and scorer.stats.batches:
                t_first = time.perf_counter()
            if producing is not None and not producing.done():
                continue
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
        "users_not_reflected": await _not_reflected(store, topic, last),
        "latency_ms": {
            "p50": round(statistics.quantiles(lat, n=100)[49], 1) if len(lat) > 100 else None,
            "p99": round(statistics.quantiles(lat, n=100)[98], 1) if len(lat) > 100 else None,
            "max": round(lat[-1], 1) if lat else None,
        },
        "stage_s": {k: round(v, 2) for k, v in st.stage_s.items()},
    }


async def bench_stream(home: Path, model_dir: Path, *, events: int = 3000, share: float = 0.8) -> dict[str, Any]:
    """Run both phases and return the figures (see the module docstring)."""
    info = stack.up(home / "stack")
    prepared = prepare(None, home / "data")
    tables = (prepared.catalog, prepared.neighbours, prepared.trending)
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    base = Settings(kafka_bootstrap=info.bootstrap, redis_url=redis_url, model_dir=model_dir)
    ranker = Ranker.load(model_dir, threads=base.threads, batch_size=base.score_batch_size)
    client = aioredis.from_url(redis_url, decode_responses=True, **base.redis_client_options())
    evs = split_events(home / "data", "test", None)
    try:
        peak = await _phase("max", base, ranker, client, tables, evs[:events], None)
        rate = round(peak["events_per_s"] * share, 1)
        # About 30 s at the fixed rate, from the events that follow the max phase's.
        n_fixed = min(len(evs) - events, max(int(rate * 30), 500))
        fixed = await _phase("fixed", base, ranker, client, tables, evs[events : events + n_fixed], rate)
    finally:
        await client.aclose()
    return {
        "model_version": ranker.version,
        "model_dir": str(model_dir),
        "method_chain": list(ranker.manifest.method_chain),
        "candidates_per_user": base.candidates,
        "max": peak,
        "fixed": fixed,
    }


def format_bench(result: dict[str, Any]) -> str:
    rows = [f"model {result['model_version']} ({' -> '.join(result['method_chain'])})"]
    rows.append(
        f"{'phase':<7} {'events':>7} {'ev/s':>8} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'coalesced':>9} {'lost':>5} {'dlq':>4}"
    )
    for name in ("max", "fixed"):
        p = result[name]
        lat = p["latency_ms"]
        rows.append(
            f"{name:<7} {p['events']:>7} {p['events_per_s']:>8} {p['pairs_per_s']:>8} {lat['p50']!s:>8} "
            f"{lat['p99']!s:>8} {p['coalesced']:>9} {p['lost']:>5} {p['dlq']:>4}"
        )
    rows.append(f"time per stage (s), max phase: {result['max']['stage_s']}")
    return "\n".join(rows)
