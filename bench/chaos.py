"""`rankstream bench chaos`: replica processes under a steady load through a seeded schedule of faults.

The run owns its services: a Kafka broker (KRaft) in `$RANKSTREAM_HOME/bench-chaos/kafka`, started
fresh, and a Redis primary, its replica and three Sentinels; the replicas (`rankstream serve`
processes, bench/replicas.py) write through the Sentinels and wait for the replica
(RANKSTREAM_REDIS_WAIT_REPLICAS=1), as a deployment that must survive a failover is configured. Valid
events from the test period are produced at a fixed rate for the whole run, from another process; the
faults (bench/chaos_figures.py `schedule`, bench/faults.py) come one after the other, each followed by
its recovery: kill -9 of a replica (a new one started), a broker restart, a Redis failover, a Redis
stall, corrupt artifacts published through the registry (every replica must refuse them and keep
serving; the good version is then promoted again), a burst of malformed records of every kind
(bench/malformed.py). Once the load is sent and the group's lag is gone, what is measured from outside:

- lost: valid events missing from their user's final state in Redis (`count_lost`: beyond the offset
  the user's list reflects, or an item missing from the stored history that the reference has); a
  replica killed with SIGKILL prints no totals, so nothing is counted from the replicas themselves;
- not_reflected: users whose list does not reflect their last produced event;
- the DLQ read back from its topic, against the reason each bad record was made for;
- p99 event -> Redis latency of the lists seen in Redis, per minute, and the minutes after the first
  recovery in which no list was written while events were pending; `minutes` runs from the first event
  sent to the last list written.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from aiokafka.errors import KafkaError

from rankstream.bench import chaos_figures as fig
from rankstream.bench.chaos_io import produce_logged, read_dlq, read_stored, send_raw, watch_lists
from rankstream.bench.faults import Fleet, corrupt_publish, stall
from rankstream.bench.lists import ListWatch
from rankstream.bench.malformed import malformed
from rankstream.bench.replicas import wait_ready
from rankstream.bench.results import ChaosBench, FaultRecord
from rankstream.data.live_replay import seeded
from rankstream.data.prepare import Prepared
from rankstream.deploy import redis_local
from rankstream.deploy.kafka_local import create_topics
from rankstream.deploy.redis_local import fail_over
from rankstream.deploy.stack import LocalStack, restart_kafka
from rankstream.ops.load import split_events
from rankstream.ops.replay import Produced
from rankstream.stream.errors import RankstreamError
from rankstream.stream.lag import group_lag
from rankstream.stream.livestore import seed
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)

_SETTLE_S = 3.0  # after every replica is ready: the group's last rebalance is not part of the run
_STALL_S = 8.0  # longer than the replicas' Redis timeout, so batches fail and are retried
_DRAIN_LIMIT_S = 300.0
_REPLICA_SETTINGS = {
    "redis_wait_replicas": 1,
    "redis_wait_timeout_ms": 500,
    "redis_timeout_s": 2,
    "model_poll_s": 1.0,
    # A killed replica's partitions move after this, not after the client's default.
    "kafka_consumer_options": json.dumps({"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}),
}


class ChaosRun:
    """One run, in named steps: services, data and registry, fleet, load with faults, read-back."""

    def __init__(
        self,
        home: Path,
        model: Path,
        *,
        minutes: float,
        rate: float,
        replicas: int = 2,
        seed: int = 0,
        counts: dict[str, int] | None = None,
        bad_records: int = 1000,
    ) -> None:
        self.home, self.model, self.minutes, self.rate, self.size = home, model, minutes, rate, replicas
        self.seed, self.bad_count = seed, bad_records
        self.work = home / "bench-chaos"
        self.rng = random.Random(seed)
        self.plan = fig.schedule(minutes * 60, counts or fig.fault_counts(minutes), seed)
        self.done: list[FaultRecord] = []
        self.bad: dict[tuple[int, int], str] = {}
        self.corrupt_served = 0

    async def run(self) -> ChaosBench:
        """Every step, services stopped at the end whatever happened."""
        self.kafka = LocalStack(self.work / "kafka")
        await asyncio.to_thread(self._start_services)
        try:
            await self._prepare()
            self.fleet = Fleet(self._replica_env(), self.size, self.work / "replicas")
            try:
                await wait_ready(self.fleet.replicas)
                await asyncio.sleep(_SETTLE_S)
                await self._load_with_faults()
            finally:
                self.fleet.stop()
            return await self._result()
        finally:
            with contextlib.suppress(AttributeError):
                await self.store.close()
            await asyncio.to_thread(self._stop_services)

    def _start_services(self) -> None:
        self.kafka.down()
        shutil.rmtree(self.work, ignore_errors=True)  # a fresh broker and Redis set: no earlier run's state
        self.bootstrap = self.kafka.start("kafka").bootstrap
        self.redis = redis_local.start_replicated(self.work / "redis")

    def _stop_services(self) -> None:
        with contextlib.suppress(AttributeError):
            redis_local.stop_replicated(self.redis)
        self.kafka.down()

    async def _prepare(self) -> None:
        """Topics, the catalog and seeded tables in Redis, a registry holding the model, the events to send."""
        self.topic = f"chaos-{int(time.time() * 1000)}"
        self.settings = Settings(
            kafka_bootstrap=self.bootstrap,
            redis_sentinels=tuple(self.redis.sentinel_list.split(",")),
            redis_sentinel_master=self.redis.master_name,
            redis_timeout_s=2,
            topic=self.topic,
            dlq_topic=f"{self.topic}.dlq",
            group_id=f"g-{self.topic}",
        )
        await asyncio.to_thread(create_topics, self.bootstrap, {self.topic: 4, self.settings.dlq_topic: 1})
        prepared = Prepared.load(self.home / "data")  # what `rankstream prepare` wrote
        self.store = Store.from_settings(self.settings)
        await self.store.load_catalog(prepared.catalog)
        tables = seeded(prepared, 4)
        await seed(self.store.client, self.topic, tables.shares, tables.params)
        self.registry = Registry(self.work / "registry", self.store.client)
        self.good = self.registry.add(self.model)
        await self.registry.activate(self.good, "bench")
        valid = [e for e in split_events(self.home / "data", "test") if e.item_id in prepared.catalog]
        needed = int(self.rate * self.minutes * 60)
        self.events = (valid * (needed // len(valid) + 1))[:needed]  # the test period again if the run outlasts it
        self.item = valid[0].item_id

    def _replica_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            **_REPLICA_SETTINGS,
            "kafka_bootstrap": s.kafka_bootstrap,
            "redis_sentinels": self.redis.sentinel_list,
            "redis_sentinel_master": s.redis_sentinel_master,
            "model_dir": self.registry.root,
            "topic": s.topic,
            "dlq_topic": s.dlq_topic,
            "group_id": s.group_id,
            "threads": max(s.threads // self.size, 1),
        }
        # The replicas inherit the bench's environment (other RANKSTREAM_* knobs), as bench swap's do.
        return {**os.environ, **{f"RANKSTREAM_{k.upper()}": str(v) for k, v in env.items()}}

    async def _load_with_faults(self) -> None:
        watch = ListWatch(self.store.client, sorted({e.user_id for e in self.events}))
        stop = asyncio.Event()
        watching = asyncio.create_task(watch_lists(watch, stop))
        self.t0 = time.time()
        producing = asyncio.create_task(
            produce_logged(self.bootstrap, self.topic, self.events, self.rate, self.work / "producer.log")
        )
        try:
            for planned in self.plan:
                await asyncio.sleep(max(self.t0 + planned.at_s - time.time(), 0))
                self.fleet.check()
                await self._inject(planned.kind)
            self.produced: Produced = await producing
            self.sent_at = time.time()
            self.caught_up = await self._drain()
        finally:
            stop.set()
            await asyncio.gather(watching, return_exceptions=True)
            if not producing.done():
                producing.cancel()
                await asyncio.gather(producing, return_exceptions=True)
        self.samples = watch.samples

    async def _inject(self, kind: str) -> None:
        steps = {
            "kill9": self._kill9,
            "broker_restart": self._broker_restart,
            "redis_failover": self._redis_failover,
            "redis_stall": self._redis_stall,
            "corrupt_publish": self._corrupt_publish,
            "bad_burst": self._bad_burst,
        }
        started = time.time()
        detail = await steps[kind]()
        took = time.time() - started
        self.done.append(FaultRecord(kind, round(started - self.t0, 1), round(took, 1), detail))
        log.info("chaos: %s at %.0fs, recovered in %.1fs: %s", kind, started - self.t0, took, detail)

    def _count(self, kind: str) -> int:
        return sum(1 for f in self.done if f.kind == kind)

    async def _kill9(self) -> str:
        return await self.fleet.kill9(self.rng.randrange(self.size))

    async def _broker_restart(self) -> str:
        await asyncio.to_thread(restart_kafka, self.kafka.state_dir)
        return f"broker on {self.bootstrap} stopped and started again"

    async def _redis_failover(self) -> str:
        how = "kill" if self._count("redis_failover") % 2 == 0 else "sentinel"
        old, new = await asyncio.to_thread(fail_over, self.redis, how)
        return f"{how}: primary {old} -> {new}"

    async def _redis_stall(self) -> str:
        port = await asyncio.to_thread(stall, self.redis, _STALL_S)
        return f"primary {port} paused for {_STALL_S:.0f}s"

    async def _corrupt_publish(self) -> str:
        args = (self.registry, self.model, self.good, self.work / "corrupt", self.fleet.replicas)
        detail, served = await corrupt_publish(*args, self._count("corrupt_publish"))
        self.corrupt_served += served
        return detail

    async def _bad_burst(self) -> str:
        records = malformed(self.rng, self.bad_count, self.item, self.settings.max_event_bytes)
        placed = await send_raw(self.bootstrap, self.topic, [(r.key, r.value) for r in records])
        self.bad.update({at: r.reason for at, r in zip(placed, records, strict=True)})
        return f"{len(records)} records of {len({r.reason for r in records})} reasons"

    async def _drain(self) -> float | None:
        """Seconds from the last send until the group's lag is gone; None if it is not within the limit."""
        while time.time() - self.sent_at < _DRAIN_LIMIT_S:
            self.fleet.check()
            with contextlib.suppress(KafkaError):
                lag = await group_lag(self.bootstrap, self.topic, self.settings.group_id)
                if lag and sum(lag.values()) == 0:
                    return round(time.time() - self.sent_at, 1)
            await asyncio.sleep(0.5)
        return None

    async def _result(self) -> ChaosBench:
        stored = await read_stored(self.store.client, sorted({e.user_id for e in self.events}), self.topic)
        placed = self.produced.all or []
        if len(placed) != len(self.events):
            raise RankstreamError(f"the producer placed {len(placed)} of {len(self.events)} events")
        sent = [fig.Sent(e.user_id, e.item_id, p, o) for e, (p, o, _) in zip(self.events, placed, strict=True)]
        last = {u.decode(): at for u, at in self.produced.last.items()}
        reflected = sum(1 for u, at in last.items() if u in stored and (stored[u].partition, stored[u].offset) == at)
        dlq = fig.tally_dlq(await read_dlq(self.bootstrap, self.settings.dlq_topic), self.topic, self.bad)
        writes = [s.written_at for s in self.samples]
        end = max(writes, default=self.t0)
        minutes = max(int(-(-(end - self.t0) // 60)), 1)
        first = self.done[0] if self.done else None
        first_recovery = None if first is None else self.t0 + first.at_s + first.recovered_s
        return ChaosBench(
            minutes=round((end - self.t0) / 60, 2),
            rate=self.rate,
            replicas=self.size,
            seed=self.seed,
            events=len(self.events),
            users=len(last),
            users_reflected=reflected,
            lost=fig.count_lost(sent, stored, self.settings.history_len),
            not_reflected=len(last) - reflected,
            bad_records=len(self.bad),
            dlq=dlq.dead,
            dlq_by_reason=dlq.by_reason,
            dlq_repeats=dlq.repeats,
            dlq_mismatched=dlq.mismatched,
            corrupt_served=self.corrupt_served,
            faults={k: self._count(k) for k in fig.FAULTS},
            p99_ms_by_minute=fig.p99_by_minute(((s.written_at, s.latency_ms) for s in self.samples), self.t0, minutes),
            lists_by_minute=fig.lists_by_minute(writes, self.t0, minutes),
            minutes_without_progress_after_recovery=fig.minutes_without_progress(writes, self.t0, first_recovery, end),
            first_recovery_s=None if first_recovery is None else round(first_recovery - self.t0, 1),
            caught_up_s=self.caught_up,
            fault_log=self.done,
        )


async def bench_chaos(home: Path, model: Path, **options: object) -> ChaosBench:
    """Run `ChaosRun(home, model, **options)` and return its figures (see the module docstring)."""
    return await ChaosRun(home, model, **options).run()  # type: ignore[arg-type]
