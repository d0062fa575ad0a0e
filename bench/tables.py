"""`rankstream bench tables`: the live-tables job as deployed (`rankstream tables` processes) on the real
Kafka and Redis, each phase on a topic of its own seeded like `rankstream load` seeds.

1. Maximum rate: the events are produced first, then one replica drains them: events applied per second.
2. Freshness: the events produced at `rate` with one replica running; for every record, the time from
   its send to the moment its partition's share in Redis reflects it (the share's offset is polled).
3. Kill run: the events produced at `rate` to `replicas` replicas, one of which is killed with SIGKILL
   (and started again) every `every_s` until `kills` kills. Once every share reflects its partition's
   last record, the shares in Redis must equal those of the uninterrupted run (phase 1) and an offline
   recomputation (`LiveReplay`: the same `Share.apply`, the same order), exactly.
"""

import asyncio
import copy
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rankstream.bench.latency import percentile
from rankstream.data.live_replay import LiveReplay, seeded
from rankstream.data.prepare import Prepared, prepare
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.ops.replay import Produced, event_records, produce
from rankstream.stream.events import ClickEvent
from rankstream.stream.live import Share, event_ms
from rankstream.stream.livestore import read_share, seed, share_keys
from rankstream.stream.redis_client import RedisClient, connect
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

PARTITIONS = 4
BENCH_DB = 2  # a Redis database of its own
_SETTLE_TIMEOUT_S = 180.0
# Short sessions: a killed replica's partitions move within seconds, not the default 10 s.
_CONSUMER = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


@dataclass
class TablesBench:
    events: int
    max_events_per_s: float
    rate: float
    freshness_ms: dict[str, float]
    kills: int
    replicas: int
    equal_uninterrupted: bool
    equal_offline: bool
    differences: list[str] = field(default_factory=list)  # the first few, when not equal
    lost: int = 0  # records produced that no share reflects at the end

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def format_tables(r: TablesBench) -> str:
    rows = [
        ("events (test period)", f"{r.events:,}"),
        ("maximum rate, one replica", f"{r.max_events_per_s:,.0f} events/s"),
        (
            f"freshness at {r.rate:,.0f} events/s",
            f"p50 {r.freshness_ms['p50']:.0f} ms, p99 {r.freshness_ms['p99']:.0f} ms",
        ),
        (f"kill -9 run, {r.replicas} replicas", f"{r.kills} kills"),
        ("equal to the uninterrupted run", str(r.equal_uninterrupted)),
        ("equal to the offline recomputation", str(r.equal_offline)),
        ("lost", str(r.lost)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Replicas:
    """`rankstream tables` processes on one topic; `kill` sends SIGKILL and starts a new one in its place."""

    def __init__(self, env: dict[str, str], n: int, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs = [self._spawn(i) for i in range(n)]
        self.kills = 0

    def _spawn(self, i: int) -> subprocess.Popen:  # type: ignore[type-arg]
        with (self.log_dir / f"tables-{i}.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "rankstream.cli.main", "tables"], env=self.env, stdout=out, stderr=out
            )

    def kill(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.procs))
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=30)
        self.kills += 1
        self.procs[i] = self._spawn(i)

    def check(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                tail = (self.log_dir / f"tables-{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"tables replica {i} exited with {p.returncode}:\n{tail}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def ends(produced: Produced) -> dict[int, int]:
    """Each partition's last produced offset."""
    out: dict[int, int] = {}
    for partition, offset in produced.last.values():
        out[partition] = max(out.get(partition, -1), offset)
    return out


async def stored_offsets(client: RedisClient, topic: str) -> dict[int, int]:
    async with client.pipeline(transaction=False) as pipe:
        for p in range(PARTITIONS):
            pipe.hget(share_keys(topic, p)[0], "offset")
        return {p: int(v) if v is not None else -1 for p, v in enumerate(await pipe.execute())}


async def wait_taken(client: RedisClient, topic: str, since_ms: float, replicas: "Replicas") -> None:
    """Until every share of `topic` was taken by a replica after `since_ms`: the job serves from then."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        replicas.check()
        async with client.pipeline(transaction=False) as pipe:
            for p in range(PARTITIONS):
                pipe.hget(share_keys(topic, p)[0], "taken_ms")
            taken = await pipe.execute()
        if all(t is not None and int(t) >= since_ms for t in taken):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the tables replicas took not every share of {topic} in {_SETTLE_TIMEOUT_S:.0f}s")


async def settle(client: RedisClient, topic: str, last: dict[int, int], replicas: Replicas) -> int:
    """Wait until every share reflects its partition's last record; the records still not reflected."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while True:
        replicas.check()
        stored = await stored_offsets(client, topic)
        behind = sum(max(0, off - stored.get(p, -1)) for p, off in last.items())
        if not behind or time.monotonic() > deadline:
            return behind
        await asyncio.sleep(0.2)


def compare(got: Sequence[Share], want: Sequence[Share], limit: int = 5) -> list[str]:
    """What differs between two sets of shares (offsets aside), the first `limit` things."""
    out = []
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in ("neighbours", "counts", "users", "bought", "trend", "trend_day", "last_ms"):
            a, b = getattr(g, name), getattr(w, name)
            if name == "users":
                a = {u: x.dump() for u, x in a.items()}
                b = {u: x.dump() for u, x in b.items()}
            if a != b:
                keys = sorted(set(a) ^ set(b)) if isinstance(a, dict | set) else []
                out.append(f"share {p} {name} differs" + (f" (keys only on one side: {keys[:3]})" if keys else ""))
    return out[:limit]


async def read_all(client: RedisClient, topic: str, replay: LiveReplay) -> list[Share]:
    return [await read_share(client, topic, p, replay.params) for p in range(PARTITIONS)]


class Topic:
    """A seeded topic of its own and its replicas' environment."""

    def __init__(self, settings: Settings, client: RedisClient, name: str) -> None:
        self.settings, self.client = settings, client
        self.name = f"tables-{name}-{int(time.time() * 1000)}"

    async def create(self, replay: LiveReplay) -> None:
        await asyncio.to_thread(create_topics, self.settings.kafka_bootstrap, {self.name: PARTITIONS})
        await seed(self.client, self.name, replay.shares, replay.params)

    def env(self) -> dict[str, str]:
        return replica_env(self.settings, self.name)


def replica_env(settings: Settings, topic: str) -> dict[str, str]:
    """The environment of a `rankstream tables` replica on `topic` of the settings' Kafka and Redis."""
    return {
        **os.environ,
        "RANKSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "RANKSTREAM_REDIS_URL": settings.redis_url,
        "RANKSTREAM_TOPIC": topic,
        "RANKSTREAM_TABLES_GROUP_ID": f"g-tables-{topic}",
        "RANKSTREAM_KAFKA_CONSUMER_OPTIONS": json.dumps(_CONSUMER),
    }


async def freshness(
    client: RedisClient, topic: Topic, events: Sequence[ClickEvent], rate: float, log_dir: Path
) -> dict[str, float]:
    """p50/p99 ms from a record's Kafka timestamp (its send) to the first poll that finds its share
    reflecting it; one replica, `rate` events/s. Polled every 10 ms, so that is the resolution."""
    started_ms = time.time() * 1000
    replicas = Replicas(topic.env(), 1, log_dir)
    reached: dict[int, list[tuple[int, float]]] = {}  # partition -> (stored offset, first seen, ms)
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            now = time.time() * 1000
            for p, off in (await stored_offsets(client, topic.name)).items():
                if not reached.get(p) or reached[p][-1][0] != off:
                    reached.setdefault(p, []).append((off, now))
            await asyncio.sleep(0.01)

    try:
        await wait_taken(client, topic.name, started_ms, replicas)  # the clock starts once it serves
        poller = asyncio.create_task(poll())
        records = event_records(events)
        produced = await produce(topic.settings.kafka_bootstrap, topic.name, records, rate=rate, keep_all=True)
        await settle(client, topic.name, ends(produced), replicas)
        stop.set()
        await poller
    finally:
        replicas.stop()
    delays = []
    for p, off, sent_ms in produced.all or []:
        seen = next((t for o, t in reached.get(p, []) if o >= off), None)
        if seen is not None:
            delays.append(max(0.0, seen - sent_ms))
    return {"p50": percentile(delays, 50), "p99": percentile(delays, 99)}


async def bench_tables_on(
    settings: Settings,
    prepared_dir: Path,
    log_dir: Path,
    *,
    events: list[ClickEvent] | None = None,
    rate: float = 500.0,
    replicas: int = 2,
    kills: int = 20,
    every_s: float = 1.0,
    seed_events: LiveReplay | None = None,
    rng_seed: int = 0,
) -> TablesBench:
    """The three phases on the stack in `settings` (see the module docstring)."""
    prepared = Prepared.load(prepared_dir)
    evs = events if events is not None else split_events(prepared_dir, "test", None)

    base = seed_events if seed_events is not None else await asyncio.to_thread(seeded, prepared, PARTITIONS)
    want = copy.deepcopy(base)  # before anything else touches it
    client = connect(settings.redis_url)
    try:
        # 1. Maximum rate: a backlog, one replica.
        straight = Topic(settings, client, "max")
        await straight.create(base)
        produced = await produce(settings.kafka_bootstrap, straight.name, event_records(evs), rate=None)
        t0 = time.monotonic()
        one = Replicas(straight.env(), 1, log_dir)
        try:
            lost = await settle(client, straight.name, ends(produced), one)
        finally:
            one.stop()
        took = time.monotonic() - t0
        uninterrupted = await read_all(client, straight.name, base)

        # 2. Freshness at a fixed rate.
        timed = Topic(settings, client, "fresh")
        await timed.create(base)
        fresh_ms = await freshness(client, timed, evs, rate, log_dir)

        # 3. Kill -9 during a run at the same rate.
        killed = Topic(settings, client, "kill")
        await killed.create(base)
        group = Replicas(killed.env(), replicas, log_dir)
        rng = random.Random(rng_seed)
        try:
            sending = asyncio.create_task(produce(settings.kafka_bootstrap, killed.name, event_records(evs), rate=rate))
            while group.kills < kills or not sending.done():
                await asyncio.sleep(every_s * rng.uniform(0.5, 1.5))
                if group.kills < kills:
                    group.kill(rng)
            lost += await settle(client, killed.name, ends(sending.result()), group)
        finally:
            group.stop()
        after_kills = await read_all(client, killed.name, base)
    finally:
        await client.aclose()
    want.apply_all((e.user_id, e.item_id, event_ms(e)) for e in evs)
    diff_run = compare(after_kills, uninterrupted)
    diff_offline = compare(after_kills, want.shares)
    return TablesBench(
        events=len(evs),
        max_events_per_s=len(evs) / took,
        rate=rate,
        freshness_ms=fresh_ms,
        kills=group.kills,
        replicas=replicas,
        equal_uninterrupted=not diff_run,
        equal_offline=not diff_offline and not compare(uninterrupted, want.shares),
        differences=diff_run + diff_offline,
        lost=lost,
    )


def bench_tables(home: Path, **kw: object) -> TablesBench:
    """`rankstream bench tables` on the local stack, the prepared data of `home`, every test event."""
    info = stack.up(home / "stack")
    redis_url = info.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    settings = Settings(kafka_bootstrap=info.bootstrap, redis_url=redis_url)
    log_dir = home / "bench-tables"
    log_dir.mkdir(parents=True, exist_ok=True)
    prepare(None, home / "data")
    return asyncio.run(bench_tables_on(settings, home / "data", log_dir, **kw))  # type: ignore[arg-type]
