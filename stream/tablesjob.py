"""`rankstream tables`: keeps the live tables moving with every valid click, effectively once.

Its own consumer group on the clicks topic, any number of replicas. A replica that is given a partition
reads that partition's share from Redis and seeks to the offset after the one the share reflects (the
Kafka commit is only for lag dashboards; the share's stored offset is the truth). After each fetch it
applies the records in order and writes the share's changed values with the new offset, fenced on the
old one (`livestore.write_share`). Whatever kills it between two writes, the next owner starts from the
last write, so every event is counted once. Writes are spaced by `tables_flush_ms` per share: the
records fetched meanwhile are applied in memory and written together.

Invalid records are skipped and counted, never dead-lettered here: the scorer, reading the same topic,
dead-letters them with their reason, once.
"""

import asyncio
import logging
import os
import socket
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from rankstream.stream import metrics as m
from rankstream.stream.errors import RankstreamError
from rankstream.stream.events import Rejected, parse_event
from rankstream.stream.health import Probe, run_job
from rankstream.stream.live import LiveParams, Share, event_ms
from rankstream.stream.livestore import FenceMoved, mark_taken, read_meta, read_share, write_share
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient, connect_from_settings
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

_COMMIT_EVERY_S = 1.0
_FETCH_MIN_BYTES = 1 << 20  # larger than any fetch at these rates: the wait decides


class _Assign(ConsumerRebalanceListener):
    """Notes what was assigned and pauses it; the loop reads the shares outside the rebalance, because a
    share takes seconds to read and the group would otherwise time the member out mid-rebalance."""

    def __init__(self, job: "TablesJob") -> None:
        self.job = job

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.job.shares.pop(tp.partition, None)
            self.job.pending.discard(tp)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.job.pending |= set(assigned)
        self.job.consumer.pause(*assigned)


class TablesJob:
    """One replica of the tables job. `run` until `stop`."""

    def __init__(self, settings: Settings, client: RedisClient) -> None:
        self.settings = settings
        self.client = client
        self.params = LiveParams()
        self.shares: dict[int, Share] = {}
        self._stored: dict[int, int] = {}  # partition -> the offset its share in Redis reflects (the fence)
        self._written_at: dict[int, float] = {}  # partition -> when its share was last written (monotonic)
        self.pending: set[TopicPartition] = set()  # assigned, share not read yet (paused until then)
        self.replica = settings.replica or f"{socket.gethostname()}-{os.getpid()}"
        self.applied = 0
        self.skipped = 0
        self._stop = asyncio.Event()
        self._to_commit: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        # The scorer's probes, same meaning: /healthz fails when the loop stops turning, /readyz while
        # nothing is assigned, a failure is being backed off from, or Redis does not answer.
        self.probe = Probe(settings.liveness_s, ping=client.ping)
        self.consumer = AIOKafkaConsumer(
            group_id=settings.tables_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **fetch_options(settings.tables_fetch_wait_ms),
            **settings.kafka_client_options(),
        )

    async def start(self) -> None:
        topic, partitions, self.params = await read_meta(self.client)
        if topic != self.settings.topic:
            raise RankstreamError(
                f"the live tables were seeded for topic {topic!r}, this job reads {self.settings.topic!r}: "
                "run `rankstream load` for this topic"
            )
        await self.consumer.start()
        found = self.consumer.partitions_for_topic(topic) or set()
        if found and len(found) != partitions:
            raise RankstreamError(
                f"topic {topic} has {len(found)} partitions, the tables were seeded for {partitions}: users "
                "moved partitions, so the shares no longer match; run `rankstream load` again"
            )
        self.consumer.subscribe([topic], listener=_Assign(self))
        self.probe.assigned = lambda: len(self.consumer.assignment())
        self.probe.started = True
        self.probe.progressed()
        log.info("tables job started: topic=%s group=%s shares=%d", topic, self.settings.tables_group_id, partitions)

    async def take(self, tp: TopicPartition) -> None:
        """Own a partition: its share as stored, and the records after the offset it reflects."""
        share = await read_share(self.client, tp.topic, tp.partition, self.params)
        if tp not in self.consumer.assignment():
            return  # revoked while it was read
        self.shares[tp.partition] = share
        self._stored[tp.partition] = share.offset
        self.consumer.seek(tp, share.offset + 1)
        self.consumer.resume(tp)
        self.pending.discard(tp)
        # Who owns the share since when, for operators (and benchmarks that wait for a replica to serve).
        await mark_taken(self.client, tp.topic, tp.partition, self.replica)
        log.info("share %s:%d taken at offset %d", tp.topic, tp.partition, share.offset)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                await self._take_pending()
                fetched = await self.consumer.getmany(timeout_ms=100, max_records=self.settings.batch_max_records)
                for tp, records in fetched.items():
                    self._apply(tp, records)
                await self._write_due()
                await self._commit_now_and_then()
                delay = 0.0
                self.probe.failing = ""
                self.probe.progressed()
            except (*REDIS_ERRORS, KafkaError, RankstreamError) as exc:
                self.probe.failing = str(exc)
                self.probe.progressed()  # backing off is the loop turning, not a hang
                delay = min(5.0, max(0.1, delay * 2))
                log.warning("tables job: %s; going back to the stored shares in %.1fs", exc, delay)
                await self._retake()
                await asyncio.sleep(delay)
        try:
            await self._write_due(everything=True)
        except (*REDIS_ERRORS, RankstreamError) as exc:
            log.warning("stopping with records applied but not written; the next owner applies them again: %s", exc)

    async def _commit_now_and_then(self) -> None:
        """Commit the written offsets to Kafka at most once a second: the commit only feeds lag
        dashboards (the shares' stored offsets are what a replica resumes from), so a round trip to the
        broker after every write would be work on the hot path for nothing."""
        now = time.monotonic()
        if not self._to_commit or now - self._committed_at < _COMMIT_EVERY_S:
            return
        owned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self._to_commit.items() if tp in owned}
        self._to_commit.clear()
        self._committed_at = now
        if offsets:
            await self.consumer.commit(offsets)

    async def _take_pending(self) -> None:
        """Read the shares of newly assigned partitions. One that cannot be read (a stray value; Redis
        away) stays paused and is tried again next turn, logged; the other partitions go on."""
        for tp in list(self.pending):
            try:
                await self.take(tp)
            except (*REDIS_ERRORS, RankstreamError) as exc:
                log.error("share %s:%d not taken: %s", tp.topic, tp.partition, exc)

    def _apply(self, tp: TopicPartition, records: list) -> None:  # type: ignore[type-arg]
        """Apply records to the share in memory; `_write_due` writes it."""
        share = self.shares.get(tp.partition)
        if share is None:
            if tp in self.consumer.assignment():
                self.pending.add(tp)  # dropped after a failed write: start again from what is stored
                self.consumer.pause(tp)
            return
        now = None
        for rec in records:
            if rec.offset <= share.offset:
                continue  # fetched before a seek back
            try:
                ev = parse_event(rec.value, self.settings.max_event_bytes, now)
            except Rejected:
                self.skipped += 1
                m.TABLES_SKIPPED.inc()
            else:
                share.apply(ev.user_id, ev.item_id, event_ms(ev))
                self.applied += 1
                m.TABLES_APPLIED.inc()
            share.offset = rec.offset

    async def _write_due(self, *, everything: bool = False) -> None:
        """Write the shares with unwritten records whose last write is `tables_flush_ms` old (all of them
        with `everything`), concurrently: each is one script on its own slot."""
        now = time.monotonic()
        flush_s = self.settings.tables_flush_ms / 1000
        due = [
            (p, share)
            for p, share in self.shares.items()
            if share.offset != self._stored[p] and (everything or now - self._written_at.get(p, 0.0) >= flush_s)
        ]
        await asyncio.gather(*(self._write(p, share) for p, share in due))

    async def _write(self, partition: int, share: Share) -> None:
        # The share is passed in, not looked up: a revocation may drop it from `shares` before this runs.
        expected = self._stored[partition]
        try:
            await write_share(self.client, self.settings.topic, partition, share, share.take_dirty(), expected)
        except FenceMoved as exc:
            # Another replica owns it now and has written past us: ours is stale, drop it.
            log.warning("%s; dropping this replica's copy", exc)
            m.TABLES_WRITES.labels("fence_moved").inc()
            self._drop(partition, share)
            return
        except BaseException:
            # The share in memory is ahead of Redis and cannot be rolled back: read it again.
            self._drop(partition, share)
            raise
        m.TABLES_WRITES.labels("ok").inc()
        if self.shares.get(partition) is not share:
            return  # revoked (and perhaps taken again) while it was written: the new copy is the one to go on
        self._stored[partition] = share.offset
        self._written_at[partition] = time.monotonic()
        self._to_commit[TopicPartition(self.settings.topic, partition)] = share.offset + 1

    def _drop(self, partition: int, share: Share) -> None:
        if self.shares.get(partition) is share:
            self.shares.pop(partition)

    async def _retake(self) -> None:
        """After a failure: every assigned partition whose share may be ahead of Redis is read again."""
        for tp in self.consumer.assignment():
            if tp.partition not in self.shares:
                self.pending.add(tp)
                self.consumer.pause(tp)

    async def close(self) -> None:
        await self.consumer.stop()


def fetch_options(wait_ms: int) -> dict[str, int]:
    """Consumer options for fetches that wait `wait_ms` unless a full fetch's worth of records is there
    sooner; none for 0 (Kafka's default: a fetch returns with the first byte)."""
    if not wait_ms:
        return {}
    return {"fetch_max_wait_ms": wait_ms, "fetch_min_bytes": _FETCH_MIN_BYTES}


async def run_tables(settings: Settings) -> None:
    """Run one tables replica until SIGTERM/SIGINT; /metrics, /healthz, /readyz on RANKSTREAM_METRICS_PORT."""
    client = connect_from_settings(settings)
    await run_job(TablesJob(settings, client), settings.metrics_port, client.aclose)
