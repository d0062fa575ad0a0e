"""`rankstream bench live`: what users would have seen, with the item tables frozen and with them live.

Two arms on the real Kafka and Redis, the same events (the whole test period, in time order) at the same
fixed rate, the same model, each arm on a topic and a flushed Redis database of its own, seeded like
`rankstream load` seeds:
- frozen: the scorer alone, the tables never moved. `frozen="train"` (the default) seeds them with the
  train split alone: the tables `prepare` computed and the scorer served before the tables were live.
  `frozen="seeded"` seeds them like the live arm (every event before the test period) and then holds them,
  which isolates what moving the tables during the test period is worth;
- live: the tables seeded with every event before the test period, then moved by one `rankstream tables`
  replica (a process) sharing the machine with the scorer.
By default (`arms_run="together"`) both arms run at once: their events produced at the same time, each at
the rate, their scorers in this process and the live arm's replica on the same cores at the same moments,
each arm in a Redis database of its own. How many lists a scorer writes at a fixed rate follows the CPU it
gets, and the per-event figures follow that; run one after the other (`"apart"`), the arms meet whatever
the machine gives in their own minutes, which moved the per-event ratio by a fifth between runs of the
same code. Together, what differs between them is the tables, and what reading moving tables costs.
For every event whose user had a list on screen, the scorer notes where the event's item stood in that
list (the live hit-rate it already counts). hit_rate@10: the share of those events whose item was in
the top 10; ndcg@10: 1 / log2(rank + 2) for such an event, else 0 (one relevant item per event).
Next basket: the same, over the events whose list on screen was written before their basket began (the
list reflects an event of another time). An event whose list was written from earlier events of its own
basket (the same user, the same time) is checked against co-visitation within the basket it is part of;
how many such events there are depends on how fast the scorer writes, not on the tables, so the next-basket
figures compare the arms on what only the tables decide.
Intervals: 95% bootstrap over users (1,000 resamples, seed 0), users resampled together for the ratio.
Freshness (live arm): from a record's Kafka timestamp to the first poll (every 20 ms) that finds its
partition's share in Redis at or past it.
"""

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from redis.connection import parse_url

from rankstream.bench.latency import percentile
from rankstream.bench.machine import CpuMeter
from rankstream.bench.results import CpuUse
from rankstream.bench.stream import count_not_reflected, produce_elsewhere
from rankstream.bench.tables import PARTITIONS, Replicas, Topic, stored_offsets, wait_taken
from rankstream.data.live_replay import LiveReplay, seeded
from rankstream.data.prepare import Prepared, prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.ops.replay import Produced
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag
from rankstream.stream.live import event_ms
from rankstream.stream.livestore import seed
from rankstream.stream.ranker import Ranker, serving_loader
from rankstream.stream.recorder import Outcome
from rankstream.stream.redis_client import connect_from_settings
from rankstream.stream.scorer import Scorer
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

BENCH_DB = 3
_RESAMPLES = 1_000
_POLL_S = 0.02


@dataclass
class Arm:
    events: int  # events checked against a list on screen
    hit_rate_at_10: float
    ndcg_at_10: float
    ci95: dict[str, list[float]]
    lost: int
    users_not_reflected: int
    p99_ms: float | None  # event -> list in Redis, for the scorer's load at this rate
    # Lists the scorer wrote: fewer means more events coalesced into one scoring, so more events are
    # judged against a list written a few events earlier; the per-event figures follow it.
    lists_written: int
    next_basket: dict[str, object]  # events, hit_rate@10, ndcg@10, ci95 over next-basket events only
    # The CPU while the arm's events were produced and scored (bench.machine): the live arm's scorer shares
    # the cores with its tables replica, and the lists it writes follow what it gets of them.
    cpu: CpuUse | None = None


@dataclass
class LiveBench:
    events: int
    rate: float
    model: str
    frozen_tables: str  # "train" or "seeded": what the frozen arm's tables hold
    arms_run: str  # "together" (both arms at once, on the same cores at the same moments) or "apart"
    frozen: Arm
    live: Arm
    ratio: dict[str, dict[str, float | list[float]]]  # live / frozen, with its interval
    ratio_next_basket: dict[str, dict[str, float | list[float]]]
    freshness_ms: dict[str, float | None]
    lost: int

    def to_json(self) -> str:
        out = asdict(self)
        for arm in ("frozen", "live"):  # the key names
            a = out[arm]
            a["hit_rate@10"], a["ndcg@10"] = a.pop("hit_rate_at_10"), a.pop("ndcg_at_10")
        return json.dumps(out, indent=2)


def format_live(r: LiveBench) -> str:
    def row(name: str, a: Arm) -> str:
        hr, nd = a.ci95["hit_rate@10"], a.ci95["ndcg@10"]
        return (
            f"{name:<7} {a.events:>8,} {a.hit_rate_at_10:.4f} [{hr[0]:.4f}, {hr[1]:.4f}]  "
            f"{a.ndcg_at_10:.4f} [{nd[0]:.4f}, {nd[1]:.4f}]  {a.lists_written:>13,}  {a.lost:>4}  "
            + ("-" if a.cpu is None else a.cpu.brief())
        )

    hr, nb = r.ratio["hit_rate@10"], r.ratio_next_basket["hit_rate@10"]
    return "\n".join(
        [
            f"{r.events:,} test events at {r.rate:,.0f}/s per arm, model {r.model}, frozen tables: {r.frozen_tables}, "
            f"arms run {r.arms_run}",
            "tables  checked  hit-rate@10 [95% CI]         ndcg@10 [95% CI]         lists written  lost  "
            "cpu busy/steal/scorer",
            row("frozen", r.frozen),
            row("live", r.live),
            f"live / frozen hit-rate@10: {hr['ratio']:.3f} [{hr['ci95'][0]:.3f}, {hr['ci95'][1]:.3f}]",  # type: ignore[index]
            *(
                f"next basket, {name}: {a.next_basket['events']:,} events, hit-rate@10 "
                f"{a.next_basket['hit_rate@10']:.4f}, ndcg@10 {a.next_basket['ndcg@10']:.4f}"
                for name, a in (("frozen", r.frozen), ("live", r.live))
            ),
            f"next basket, live / frozen hit-rate@10: {nb['ratio']:.3f} [{nb['ci95'][0]:.3f}, {nb['ci95'][1]:.3f}]",  # type: ignore[index]
            f"freshness: p50 {r.freshness_ms['p50']} ms, p99 {r.freshness_ms['p99']} ms",
        ]
    )


def per_user(outcomes: Sequence[Outcome]) -> dict[str, tuple[int, int, float]]:
    """user -> (events, hits in the top 10, summed gain)."""
    out: dict[str, tuple[int, int, float]] = {}
    for user, rank, *_ in outcomes:
        n, h, g = out.get(user, (0, 0, 0.0))
        hit = 0 <= rank < 10
        out[user] = (n + 1, h + hit, g + (1.0 / math.log2(rank + 2) if hit else 0.0))
    return out


def _sums(table: dict[str, tuple[int, int, float]], users: list[str]) -> np.ndarray:
    return np.array([table.get(u, (0, 0, 0.0)) for u in users], dtype=float).reshape(-1, 3)


def next_basket(outcomes: Sequence[Outcome], basket: dict[tuple[int, int], int]) -> list[Outcome]:
    """The outcomes whose list on screen reflects an event of another time than theirs (`basket`:
    (partition, offset) -> event time)."""
    return [
        o
        for o in outcomes
        if basket.get((o.partition, o.shown_offset if o.shown_offset is not None else -1))
        != basket[(o.partition, o.offset)]
    ]


def summarize(
    frozen: Sequence[Outcome], live: Sequence[Outcome], seed_: int = 0
) -> tuple[dict[str, tuple[float, list[float]]], dict[str, tuple[float, list[float]]], dict[str, dict]]:
    """Each arm's (value, ci95) per metric, and live / frozen with its paired interval."""
    a, b = per_user(frozen), per_user(live)
    users = sorted(set(a) | set(b))
    fa, fb = _sums(a, users), _sums(b, users)
    idx = np.random.default_rng(seed_).integers(0, len(users), size=(_RESAMPLES, len(users))) if users else None

    def metrics(s: np.ndarray) -> dict[str, float]:
        n = s[..., 0].sum(axis=-1)
        return {
            "hit_rate@10": s[..., 1].sum(axis=-1) / np.maximum(n, 1),
            "ndcg@10": s[..., 2].sum(axis=-1) / np.maximum(n, 1),
        }

    point_a, point_b = metrics(fa), metrics(fb)
    boot_a = metrics(fa[idx]) if idx is not None else None
    boot_b = metrics(fb[idx]) if idx is not None else None

    def ci(x: np.ndarray | None) -> list[float]:
        return (
            [round(float(np.percentile(x, 2.5)), 5), round(float(np.percentile(x, 97.5)), 5)] if x is not None else []
        )

    arm_a = {k: (round(float(v), 5), ci(boot_a[k] if boot_a else None)) for k, v in point_a.items()}
    arm_b = {k: (round(float(v), 5), ci(boot_b[k] if boot_b else None)) for k, v in point_b.items()}
    ratio = {}
    for k in point_a:
        r = float(point_b[k] / point_a[k]) if point_a[k] else float("nan")
        boots = boot_b[k] / np.maximum(boot_a[k], 1e-12) if boot_a and boot_b else None
        ratio[k] = {"ratio": round(r, 4), "ci95": ci(boots)}
    return arm_a, arm_b, ratio


ArmOut = tuple[list[Outcome], int, int, float | None, dict[str, float | None], list[Outcome], int, CpuUse]


class _Run:
    """One arm on a topic of its own and a flushed Redis database (`redis_url`'s): its scorer reads the
    shares `tables` seeds there; with `with_tables`, a `rankstream tables` replica moves them."""

    def __init__(
        self,
        name: str,
        base: Settings,
        ranker: Ranker,
        redis_url: str,
        tables: LiveReplay,
        events: list[ClickEvent],
        log_dir: Path,
        with_tables: bool,
    ) -> None:
        self.tables, self.events, self.log_dir = tables, events, log_dir
        self.with_tables = with_tables
        self.client = connect_from_settings(base.model_copy(update={"redis_url": redis_url}))
        self.topic = Topic(base, self.client, name)
        t = self.topic.name
        self.settings = base.model_copy(
            update={"topic": t, "dlq_topic": f"{t}.dlq", "group_id": f"g-{t}", "redis_url": redis_url}
        )
        self.store = Store(self.client, ttl_s=base.rec_ttl_s)
        self.ranker = ranker
        self.replicas: Replicas | None = None
        self.reached: dict[int, list[tuple[int, float]]] = {}  # partition -> (stored offset, first seen ms)
        self.cpu: CpuUse | None = None

    async def start(self, catalog: dict[str, str]) -> None:
        t = self.topic.name
        await asyncio.to_thread(create_topics, self.settings.kafka_bootstrap, {t: PARTITIONS, f"{t}.dlq": 1})
        await self.client.flushdb()
        await self.store.load_catalog(catalog)
        await seed(self.client, t, self.tables.shares, self.tables.params)
        self.started_ms = time.time() * 1000
        if self.with_tables:
            env = {**self.topic.env(), "RANKSTREAM_REDIS_URL": self.settings.redis_url}
            self.replicas = Replicas(env, 1, self.log_dir)
        self.scorer = Scorer(self.settings, self.ranker, self.store, latency_samples=len(self.events) + 10_000)
        await self.scorer.start()
        self.task = asyncio.create_task(self.scorer.run())

    async def ready(self) -> None:
        """Once the scorer joined its group (3 s) and the tables replica took every share."""
        if self.replicas is not None:
            await wait_taken(self.client, self.topic.name, self.started_ms, self.replicas)

    def produce(self, rate: float) -> None:
        self.meter = CpuMeter()
        self.producing = asyncio.create_task(
            produce_elsewhere(self.settings.kafka_bootstrap, self.topic.name, self.events, rate, keep_all=True)
        )

    async def poll(self) -> bool:
        """Note how far the tables are; True once every event is scored and applied (the CPU noted then)."""
        if self.task.done():
            self.task.result()
        if self.replicas is not None:
            self.replicas.check()
            now = time.time() * 1000
            for p, off in (await stored_offsets(self.client, self.topic.name)).items():
                if not self.reached.get(p) or self.reached[p][-1][0] != off:
                    self.reached.setdefault(p, []).append((off, now))
        if not self.producing.done():
            return False
        produced: Produced = self.producing.result()
        lag = await group_lag(self.settings.kafka_bootstrap, self.topic.name, self.settings.group_id)
        ends: dict[int, int] = {}
        for q, o, _ in produced.all or []:
            ends[q] = max(ends.get(q, -1), o)
        applied = self.replicas is None or all(self.reached.get(p, [(-1, 0)])[-1][0] >= o for p, o in ends.items())
        if lag and sum(lag.values()) == 0 and applied:
            self.cpu = self.meter.stop()
            return True
        return False

    async def stop(self) -> None:
        if getattr(self, "scorer", None) is None:
            return
        self.scorer.stop()
        await self.task
        await self.scorer.close()
        if self.replicas is not None:
            self.replicas.stop()

    async def outcome(self) -> ArmOut:
        """(outcomes, lost, users not reflected, p99 ms, freshness, next-basket outcomes, lists written, CPU
        from the first event produced to the last one applied)."""
        produced: Produced = self.producing.result()
        last = {key.decode(): at for key, at in produced.last.items()}
        not_reflected = await count_not_reflected(self.store, self.topic.name, last)
        st = self.scorer.stats
        lost = len(self.events) - st.events - st.dlq
        p99 = percentile(sorted(ms for _, ms in self.scorer.latencies), 99)
        fresh: dict[str, float | None] = {"p50": None, "p99": None}
        if self.replicas is not None:
            delays = []
            for p, off, sent_ms in produced.all or []:
                seen = next((t for o, t in self.reached.get(p, []) if o >= off), None)
                if seen is not None:
                    delays.append(max(0.0, seen - sent_ms))
            fresh = {"p50": percentile(delays, 50), "p99": percentile(delays, 99)}
        sent = produced.all or []
        basket = {(p, off): event_ms(ev) for ev, (p, off, _) in zip(self.events, sent, strict=True)}
        outcomes = list(self.scorer.recorder.outcomes)
        assert self.cpu is not None
        return outcomes, lost, not_reflected, p99, fresh, next_basket(outcomes, basket), st.lists_written, self.cpu


async def _run_arms(runs: Sequence[_Run], catalog: dict[str, str], rate: float) -> list[ArmOut]:
    """`runs` at once: their events produced at the same time, each at `rate`, until every one is done."""
    try:
        for run in runs:
            await run.start(catalog)
        await asyncio.sleep(3.0)  # the scorers join their groups
        for run in runs:
            await run.ready()
        for run in runs:
            run.produce(rate)
        waiting = list(runs)
        while waiting:
            await asyncio.sleep(_POLL_S)
            waiting = [run for run in waiting if not await run.poll()]
    finally:
        for run in runs:
            await run.stop()
    return [await run.outcome() for run in runs]


FROZEN = ("train", "seeded")
ARMS = ("together", "apart")


def next_database(redis_url: str) -> str:
    """The URL of the database after `redis_url`'s on the same server (16 databases, as Redis has)."""
    db = int(parse_url(redis_url).get("db", 0))
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{(db + 1) % 16}"))


async def bench_live_on(
    base: Settings,
    data_dir: Path,
    model_dir: Path,
    log_dir: Path,
    *,
    rate: float,
    limit: int | None = None,
    frozen: str = "train",
    arms_run: str = "together",
) -> LiveBench:
    if frozen not in FROZEN:
        raise ValueError(f"frozen tables must be one of {FROZEN}, not {frozen!r}")
    if arms_run not in ARMS:
        raise ValueError(f"the arms run one of {ARMS}, not {arms_run!r}")
    prepared = Prepared.load(data_dir)
    events = split_events(data_dir, "test", limit)
    tables = await asyncio.to_thread(seeded, prepared, PARTITIONS)
    # "valid" seeds with what precedes the valid split: the train split alone.
    held = tables if frozen == "seeded" else await asyncio.to_thread(seeded, prepared, PARTITIONS, None, "valid")
    ranker = serving_loader(base)(model_dir)
    # Together, each arm has a database of its own (lists are keyed by user); apart, each flushes the one.
    live_url = next_database(base.redis_url) if arms_run == "together" else base.redis_url
    runs = {
        "frozen": _Run("frozen", base, ranker, base.redis_url, held, events, log_dir, False),
        "live": _Run("live", base, ranker, live_url, tables, events, log_dir, True),
    }
    try:
        if arms_run == "together":
            outs = await _run_arms(list(runs.values()), prepared.catalog, rate)
        else:
            outs = [(await _run_arms([run], prepared.catalog, rate))[0] for run in runs.values()]
        arms = dict(zip(runs, outs, strict=True))
    finally:
        for run in runs.values():
            await run.client.aclose()
    fa, fb, ratio = summarize(arms["frozen"][0], arms["live"][0])
    na, nb, ratio_nb = summarize(arms["frozen"][5], arms["live"][5])

    def arm(name: str, m: dict[str, tuple[float, list[float]]], n: dict[str, tuple[float, list[float]]]) -> Arm:
        outcomes, lost, not_reflected, p99, _, nexts, written, cpu = arms[name]
        return Arm(
            events=len(outcomes),
            hit_rate_at_10=m["hit_rate@10"][0],
            ndcg_at_10=m["ndcg@10"][0],
            ci95={k: v[1] for k, v in m.items()},
            lost=lost,
            users_not_reflected=not_reflected,
            p99_ms=p99,
            lists_written=written,
            cpu=cpu,
            next_basket={
                "events": len(nexts),
                **{k: v[0] for k, v in n.items()},
                "ci95": {k: v[1] for k, v in n.items()},
            },
        )

    frozen_arm, live_arm = arm("frozen", fa, na), arm("live", fb, nb)
    return LiveBench(
        events=len(events),
        rate=rate,
        model=ranker.version,
        frozen_tables=frozen,
        arms_run=arms_run,
        frozen=frozen_arm,
        live=live_arm,
        ratio=ratio,
        ratio_next_basket=ratio_nb,
        freshness_ms=arms["live"][4],
        lost=frozen_arm.lost + live_arm.lost,
    )


def bench_live(
    home: Path,
    model_dir: Path,
    *,
    rate: float,
    limit: int | None = None,
    frozen: str = "train",
    arms_run: str = "together",
    **scorer: object,
) -> LiveBench:
    """`rankstream bench live` on the local stack and the prepared data of `home`."""
    info = stack.up(home / "stack")
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    base = Settings(kafka_bootstrap=info.bootstrap, redis_url=redis_url, model_dir=model_dir, **scorer)  # type: ignore[arg-type]
    log_dir = home / "bench-live"
    log_dir.mkdir(parents=True, exist_ok=True)
    prepare(None, home / "data")
    return asyncio.run(
        bench_live_on(base, home / "data", model_dir, log_dir, rate=rate, limit=limit, frozen=frozen, arms_run=arms_run)
    )
