"""The scorer: consume click events, rank candidates per user in micro-batches, write lists, commit.

Offsets are committed only after the batch's Redis writes and dead-letter sends succeeded
(at-least-once input); the fenced Redis write makes a replayed batch harmless (effectively-once output).
Every record ends scored or dead-lettered: a failure that belongs to one record or one user's stored
state is that record's or user's dead letter; only Redis or Kafka being away fails a batch, which is
rewound and retried. The parts: `guard` (crash loops), `deadletter`, `scoring`, `tables`, `commits`,
`backoff`, `recorder` (Stats and Prometheus).
"""

import asyncio
import gc
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from rankstream.stream import batch as b
from rankstream.stream import metrics as m
from rankstream.stream.backoff import Backoff
from rankstream.stream.canary import UserTotals, in_share, latency_fields
from rankstream.stream.commits import CommitPipeline, FinishBeforeRevoke, commit_owned
from rankstream.stream.deadletter import DeadLetters, Source
from rankstream.stream.encoder import read_encoder_manifest
from rankstream.stream.errors import ArtifactError, ConfigError, RankstreamError, StoreError
from rankstream.stream.events import Rejected, internal_error, parse_event
from rankstream.stream.guard import Guard
from rankstream.stream.health import Probe
from rankstream.stream.ranker import Ranker
from rankstream.stream.recorder import Outcome, Recorder, Stats
from rankstream.stream.retrieval import MergeError, MergeHead
from rankstream.stream.scoring import rerank_top_for, score_users
from rankstream.stream.settings import Settings
from rankstream.stream.shadow import ShadowScorer
from rankstream.stream.store import Store, UserState
from rankstream.stream.tables import Tables

log = logging.getLogger(__name__)

Records = Mapping[TopicPartition, Sequence[ConsumerRecord]]

__all__ = ["Arm", "Scorer", "Stats"]


@dataclass(frozen=True)
class Arm:
    """A canary version and the share of users it serves (stream/canary.py `in_share`)."""

    ranker: Ranker
    share: float
    tag: str  # the canary's (rollouts.Canary.tag): names its per-user sums

    def serves(self, user_id: str) -> bool:
        return in_share(user_id, self.share, self.ranker.version)


def _merge_head(settings: Settings) -> MergeHead | None:
    """The learned merge RANKSTREAM_MERGE_DIR names, None when unset; a bad one stops the start."""
    if settings.merge_dir is None:
        return None
    try:
        return MergeHead.read(settings.merge_dir)
    except MergeError as exc:
        raise ConfigError(f"RANKSTREAM_MERGE_DIR: {exc}; fit one with `rankstream merge fit`") from exc


def _text_encoder(settings: Settings, merge: MergeHead | None) -> tuple[str, int] | None:
    """(version, dim) of the encoder whose title vectors the scorer searches, None when it searches none.
    The scorer reads the vectors the catalog job and `load` stored; it embeds nothing itself."""
    searches = settings.text_candidates or (merge is not None and merge.pool_text)
    if not searches or settings.encoder_dir is None:
        return None
    try:
        manifest = read_encoder_manifest(settings.encoder_dir)
    except ArtifactError as exc:
        raise ConfigError(f"RANKSTREAM_ENCODER_DIR: {exc}") from exc
    return manifest.version, manifest.dim


class Scorer:
    """One scorer replica. `run()` until `stop()`; owns its Kafka clients, not the store or ranker."""

    def __init__(self, settings: Settings, ranker: Ranker, store: Store, *, latency_samples: int = 0) -> None:
        self.settings = settings
        try:
            self.check_servable(ranker)
        except ArtifactError as exc:
            raise ConfigError(str(exc)) from exc
        self.ranker = ranker
        self.canary: Arm | None = None
        self._user_totals = UserTotals()
        self.shadow: ShadowScorer | None = None
        self.store = store
        self.recorder = Recorder(latency_samples)
        merge = _merge_head(settings)
        self.tables = Tables(
            store,
            encoder=_text_encoder(settings, merge),
            merge=merge,
            catalog_every_s=settings.catalog_refresh_ms / 1000,
            replica=settings.replica or f"{socket.gethostname()}-{os.getpid()}",
        )
        self._stopping = asyncio.Event()
        self._started = False
        common = settings.kafka_client_options()
        self._batch_lock = asyncio.Lock()
        self._consumer = AIOKafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **common,
            **settings.kafka_consumer_options,
        )
        self._commits = CommitPipeline(self._consumer, self.recorder, self.commit)
        self._backoff = Backoff(self._consumer)
        # Events of users held back for a later batch (Settings.user_quiet_ms): consumed, not yet written,
        # so no commit passes them; and per partition, the offset after the last record processed.
        self._held: list[b.Valid] = []
        self._fetched: dict[TopicPartition, int] = {}
        # Counts revocations. Records fetched across one are not processed: the revocation dropped the
        # events held before them (processing the later ones alone would write histories without those
        # and fence them out when replayed). Their partitions, if still this replica's, go back to the
        # committed offset (`_resync`) before anything else of theirs is processed.
        self._generation = 0
        self._resync: set[TopicPartition] = set()
        listener = FinishBeforeRevoke(self._batch_lock, self._commits.wait, self._forget)
        self._consumer.subscribe([settings.topic], listener=listener)
        self._producer = AIOKafkaProducer(acks="all", **common)
        self._dlq = DeadLetters(self._producer, settings.dlq_topic, settings.max_event_bytes)
        # Names this process to the crash-loop guard: a batch started by another owner and never
        # followed by a later one means that owner stopped inside it.
        self._guard = Guard(store.client, settings.group_id, uuid.uuid4().hex[:12], settings.crash_loop_limit)
        # What /healthz and /readyz read (stream/health.py).
        self.probe = Probe(settings.liveness_s, assigned=lambda: len(self._consumer.assignment()), ping=store.ping)

    @property
    def stats(self) -> Stats:
        return self.recorder.stats

    @property
    def latencies(self) -> Sequence[tuple[float, float]]:
        """(written at, unix s; event -> Redis latency, ms) of the most recent events (benchmarks)."""
        return self.recorder.latencies

    async def start(self) -> None:
        if self._started:
            raise RankstreamError("Scorer.start() called twice; make a new Scorer")
        self._started = True
        await self.tables.load()
        await self._producer.start()
        await self._consumer.start()
        # What is loaded by now (tables, model, clients) lives as long as the process: out of the cyclic
        # collector's reach, a full collection no longer walks it and no longer pauses a batch.
        gc.collect()
        gc.freeze()
        self.probe.started = True
        self.probe.progressed()
        merge = self.tables.merge
        log.info(
            "scorer started: topic=%s group=%s model=%s catalog=%d items candidates=%s",
            self.settings.topic,
            self.settings.group_id,
            self.ranker.version,
            len(self.tables.catalog),
            "co-visitation"
            if merge is None
            else f"learned merge {merge.version} (pool {merge.pool_covisit} + {merge.pool_text} text)",
        )

    def use(self, ranker: Ranker) -> None:
        """Serve `ranker` from the next batch on; the batch in flight finishes with the version it started with."""
        old, self.ranker = self.ranker, ranker
        m.MODEL.labels(old.version).set(0)
        m.MODEL.labels(ranker.version).set(1)

    def use_canary(self, arm: Arm | None) -> None:
        """Serve `arm.share` of users with the canary version from the next batch on (None: nobody)."""
        self.canary = arm
        if arm is None:
            self._user_totals = UserTotals()  # the per-user sums belong to the canary that ended

    def use_shadow(self, shadow: ShadowScorer | None) -> None:
        self.shadow = shadow

    def check_servable(self, ranker: Ranker) -> None:
        """ArtifactError when this scorer's settings cannot serve `ranker`."""
        if self.settings.rerank_top and ranker.linear is None:  # asked for explicitly; unset adapts
            raise ArtifactError(
                f"model {ranker.version} carries no linear part (linear.json), which RANKSTREAM_RERANK_TOP="
                f"{self.settings.rerank_top} needs; re-export it with this version, or set RANKSTREAM_RERANK_TOP=0"
            )

    def assignment(self) -> set[TopicPartition]:
        """The partitions this replica owns now (empty until the group has assigned them)."""
        return set(self._consumer.assignment())

    def rerank_top(self, ranker: Ranker) -> int:
        """Candidates this scorer would cross-encode per user with `ranker` (0: all)."""
        return rerank_top_for(self.settings, ranker)

    def sample_titles(self, n: int = 50) -> list[str]:
        """Some catalog titles, for warming a new model up at serving shapes."""
        return self.tables.sample_titles(n)

    def stop(self) -> None:
        """Ask the loop to finish the in-flight batch, commit and return (safe from a signal handler)."""
        self._stopping.set()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._producer.stop()

    async def run(self) -> Stats:
        m.MODEL.labels(self.ranker.version).set(1)
        while not self._stopping.is_set():
            self.probe.progressed()
            m.READY.set(0 if self.probe.failing or not self._consumer.assignment() else 1)
            generation = self._generation
            polling = time.perf_counter()
            records = await self._poll()
            if not records and not self._held:
                self._commits.raise_failed()  # an idle replica learns of a failed commit too, not at the next event
                await self._refresh_idle()
                continue
            processing = time.perf_counter()
            failed = await self._process_and_commit(records, generation, hold=True)
            self.recorder.batch_timed(processing - polling, time.perf_counter() - processing, _count(records))
            if failed is not None:
                self.probe.failing = str(failed) or type(failed).__name__
                await self._backoff.wait(_count(records), failed)
                continue
            self.probe.failing = ""
            self._backoff.succeeded()
        if self._held:  # score the users held back now rather than leave them to the next owner
            if (failed := await self._process_and_commit({}, self._generation, hold=False)) is not None:
                log.warning("users held back not scored while stopping; the next owner replays them: %s", failed)
        await self._commits.wait()
        log.info("scorer stopping: %s", self.stats)
        return self.stats

    async def _refresh_idle(self) -> None:
        """An idle replica keeps its catalog current too (at most every RANKSTREAM_CATALOG_REFRESH_MS): a
        new item is servable, and reported applied, before the first click that needs it, not after."""
        try:
            await self.tables.refresh_catalog()
        except StoreError as exc:  # the next batch meets the same outage and backs off; nothing to do here
            log.debug("catalog refresh while idle failed: %s", exc)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit offsets whose events are in Redis; retry while the broker is away (never skip ahead)."""
        await commit_owned(self._consumer, offsets, self._stopping)

    async def _process_and_commit(self, records: Records, generation: int, *, hold: bool) -> Exception | None:
        """Process a batch fetched in `generation` and start its commit; the store or Kafka error that
        failed it, if one did (the batch is rewound then)."""
        # Held while a batch is processed; a revocation takes it, then waits for the batch's commit
        # (see FinishBeforeRevoke).
        async with self._batch_lock:
            if generation != self._generation and records:
                log.info("a rebalance came while %d records were fetched: read again", _count(records))
                self._resync |= set(records)
            try:
                if self._resync:
                    records = {tp: recs for tp, recs in records.items() if tp not in self._resync}
                    await self._back_to_committed()
                if not records and not self._held:
                    return None
                offsets = await self.process(records, hold=hold)
            except (StoreError, KafkaError) as exc:
                self.recorder.failed_batch(exc)
                self._backoff.rewind(records)
                return exc
            await self._commits.start(offsets)
        return None

    async def _back_to_committed(self) -> None:
        """Seek the partitions in `_resync` that are still assigned to their committed offsets."""
        for tp in list(self._resync):
            if tp in self._consumer.assignment():
                committed = await self._consumer.committed(tp)
                try:
                    if committed is None:  # nothing committed yet: where auto_offset_reset="earliest" starts
                        await self._consumer.seek_to_beginning(tp)
                    else:
                        self._consumer.seek(tp, committed)
                except IllegalStateError:
                    pass  # revoked meanwhile: its next assignment starts from the committed offset anyway
            self._resync.discard(tp)

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what this replica holds of revoked partitions: uncommitted, their next owner replays it."""
        self._generation += 1
        self._held = [v for v in self._held if TopicPartition(v.topic, v.partition) not in revoked]
        for tp in revoked:
            self._fetched.pop(tp, None)

    async def _poll(self) -> dict[TopicPartition, list[ConsumerRecord]]:
        """The next batch: the records the consumer holds, then what the broker has beyond them.

        Without the second fetch an event that arrives while a batch is scored waits for the batch after
        next: the consumer had already buffered its partition, so it fetched nothing more meanwhile.
        """
        cap = self.settings.batch_max_records
        linger = self.settings.batch_linger_ms
        if self._held:  # come back for them once they may have stopped clicking
            linger = min(linger, self.settings.user_quiet_ms)
        records = await self._consumer.getmany(timeout_ms=linger, max_records=cap)
        room = cap - sum(len(r) for r in records.values())
        if records and room > 0 and self.settings.batch_topup_ms:
            more = await self._consumer.getmany(timeout_ms=self.settings.batch_topup_ms, max_records=room)
            for tp, recs in more.items():
                records.setdefault(tp, []).extend(recs)  # later offsets of the same partition
        return records

    async def process(self, records: Records, *, hold: bool = True) -> dict[TopicPartition, int]:
        """Validate, dead-letter, plan, score, write: everything for one batch except the commit, whose
        offsets it returns. With `hold`, users still clicking wait for a later batch (`user_quiet_ms`)."""
        try:
            return await self._process(records, hold)
        except BaseException:
            self._dlq.discard()
            raise

    async def _process(self, fetched: Records, hold: bool) -> dict[TopicPartition, int]:
        s = self.settings
        records, doomed = await self._guard.batch(fetched)
        held_before = self._held
        # Events held back before are older than the batch's events of the same users: they go first.
        by_user = b.group_by_user([*held_before, *await self._validated(records, doomed)])
        with self.recorder.stage("read"):
            states, bad = await self.store.read_states(list(by_user))
            for user, detail in bad.items():
                await self._reject_user(by_user.pop(user), Rejected("bad_state", detail))
            plans = self._plans(by_user, states)
            due, held = b.hold_back(plans, time.time() * 1000, s.user_quiet_ms if hold else 0)
            neighbours = await self.tables.neighbours_for(b.recent_items(due))
        # The versions are read once, here: a swap never changes the version of a user inside a batch.
        ranker, canary = self.ranker, self.canary
        rejected = canary_finished = 0
        for arm, arm_plans in _arms(due, ranker, canary):
            chunks = b.oldest_first_chunks(arm_plans, s.score_chunk_users)
            arm_rejected = await in_lanes(
                [partial(self._score_and_write, arm, chunk, by_user, neighbours) for chunk in chunks], s.score_lanes
            )
            rejected += arm_rejected
            if arm is not ranker:
                canary_finished = sum(len(by_user[p.user_id]) for p in arm_plans) - arm_rejected
        if self._dlq.pending:
            with self.recorder.stage("write"):
                await self._dlq.flush()
        planned = {p.user_id for p in plans}
        # Events already reflected (a replayed batch): their lists were written before.
        self.recorder.reflected([v.timestamp_ms for u, evs in by_user.items() if u not in planned for v in evs])
        waiting = {p.user_id for p in held}
        finished = sum(len(evs) for u, evs in by_user.items() if u not in waiting) - rejected
        taken = sum(len(r) for r in records.values())
        by_version = {ranker.version: finished - canary_finished}
        if canary is not None:
            by_version[canary.ranker.version] = canary_finished
        self.recorder.batch(by_version, taken, sum(p.events - 1 for p in due))
        # Only now, when nothing of the batch can fail any more (a failed batch is rewound and retried
        # with the users held before it).
        self._held = [v for p in held for v in by_user[p.user_id]]
        for tp, recs in records.items():
            self._fetched[tp] = recs[-1].offset + 1
            if len(recs) < len(fetched[tp]):  # the guard took one record: fetch the rest again
                self._consumer.seek(tp, recs[-1].offset + 1)
        return self._commit_offsets(records, held_before)

    async def _validated(
        self, records: Records, doomed: Mapping[tuple[TopicPartition, int], Rejected]
    ) -> list[b.Valid]:
        """The batch's valid events; every other record is dead-lettered with its reason.

        A click on an item this replica does not know yet makes it read the catalog's changes at once (once
        a batch): an item published a moment ago is not refused for arriving before the next refresh."""
        with self.recorder.stage("read"):
            await self.tables.refresh_catalog()
        valid = []
        caught_up = False
        for tp, recs in records.items():
            for r in recs:
                try:
                    if (rej := doomed.get((tp, r.offset))) is not None:
                        raise rej
                    try:
                        valid.append(self._validate(tp, r))
                    except Rejected as rej:
                        if rej.reason != "unknown_item" or caught_up:
                            raise
                        caught_up = True
                        await self.tables.refresh_catalog(now=True)
                        valid.append(self._validate(tp, r))
                except Rejected as rej:
                    await self._reject(Source(tp.topic, tp.partition, r.offset, r.key, r.value), rej)
        return valid

    def _validate(self, tp: TopicPartition, r: ConsumerRecord) -> b.Valid:
        """The record as a valid event, or Rejected: any failure here is this record's, never the batch's."""
        try:
            ev = parse_event(r.value, self.settings.max_event_bytes)
            if ev.item_id not in self.tables.catalog:
                raise Rejected("unknown_item", ev.item_id[:64])
            return b.Valid(tp.partition, r.offset, r.timestamp, ev, tp.topic, r.key, r.value)
        except Rejected:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise internal_error(exc) from exc

    def _plans(self, by_user: Mapping[str, list[b.Valid]], states: Mapping[str, UserState]) -> list[b.UserPlan]:
        plans = []
        for u, evs in by_user.items():
            if (p := b.plan_user(u, evs, states[u], self.settings.history_len)) is not None:
                plans.append(p)
        return plans

    async def _score_and_write(
        self,
        ranker: Ranker,
        chunk: list[b.UserPlan],
        by_user: Mapping[str, list[b.Valid]],
        neighbours: Mapping[str, Sequence[str]],
    ) -> int:
        """Score one chunk of users and write their lists; how many events were dead-lettered instead."""
        started_ms = self.recorder.chunk_started()
        with self.recorder.stage("score"):
            scored = await score_users(ranker, chunk, neighbours, self.tables, self.settings)
        if self.tables.indexed:
            self.recorder.retrieved(scored.retrieve_s, len(chunk))
        failed = scored.failed
        chunk = [p for p in chunk if p.user_id not in failed]
        quality = b.live_quality(chunk)
        counters = self._counters(ranker.version, chunk, failed, by_user)
        if self.recorder.outcomes.maxlen:
            self.recorder.outcomes.extend(
                Outcome(p.user_id, r, p.last.partition, o, p.shown_offset)
                for p in chunk
                for r, o in zip(p.ranks, p.offsets, strict=True)
            )
        with self.recorder.stage("write"):
            written = await self.store.write_lists(scored.writes, quality, counters)
        failed |= {u: Rejected("bad_state", detail) for u, detail in written.bad.items()}
        for user, rej in failed.items():
            await self._reject_user(by_user[user], rej)
        reflected = [v.timestamp_ms for p in chunk if p.user_id not in failed for v in by_user[p.user_id]]
        self.recorder.reflected(reflected, started_ms)
        stale = len(scored.writes) - written.applied - len(written.bad)
        self.recorder.written(written.applied, stale, scored.pairs, quality)
        if self.shadow is not None:
            self.shadow.offer(chunk, neighbours)
        return sum(len(by_user[u]) for u in failed)

    def _counters(
        self,
        version: str,
        chunk: Sequence[b.UserPlan],
        failed: Mapping[str, Rejected],
        by_user: Mapping[str, list[b.Valid]],
    ) -> dict[str, int]:
        """Per-version counters written with the chunk's lists: latency histogram, errors, shadow checks."""
        now_ms = time.time() * 1000
        latencies = [max(now_ms - v.timestamp_ms, 0.0) for p in chunk for v in by_user[p.user_id]]
        histogram = m.VERSION_LATENCY.labels(version)
        for ms in latencies:
            histogram.observe(ms / 1000)
        counters = latency_fields(version, latencies)
        if errors := sum(len(by_user[u]) for u in failed):
            counters[f"{version}:errors"] = errors
            m.VERSION_ERRORS.labels(version).inc(errors)
        if self.shadow is not None:
            counters |= self.shadow.check(chunk, by_user)
        if (canary := self.canary) is not None:  # per-user sums, for the canary's test over users
            sums: Counter[str] = Counter()
            for p in chunk:
                if p.shown_version is not None and p.events:
                    sums.update(self._user_totals.add(canary.tag, p.shown_version, p.user_id, p.events, p.hits))
            counters |= sums
        return counters

    async def _reject(self, source: Source, rejected: Rejected) -> None:
        self.recorder.dead_letter(rejected.reason)
        await self._dlq.send(source, rejected)

    async def _reject_user(self, events: Sequence[b.Valid], rejected: Rejected) -> None:
        """Dead-letter every event of one user in this batch (their state or scoring failed, not the batch's)."""
        for v in events:
            await self._reject(Source(v.topic, v.partition, v.offset, v.key, v.value), rejected)

    def _commit_offsets(self, records: Records, held_before: Sequence[b.Valid]) -> dict[TopicPartition, int]:
        """Per partition this batch touched: past every record processed, but not past a held event."""
        touched = {*records, *(TopicPartition(v.topic, v.partition) for v in (*held_before, *self._held))}
        offsets = {tp: self._fetched[tp] for tp in touched}
        for v in self._held:
            tp = TopicPartition(v.topic, v.partition)
            offsets[tp] = min(offsets[tp], v.offset)
        return offsets


def _arms(due: list[b.UserPlan], ranker: Ranker, canary: Arm | None) -> list[tuple[Ranker, list[b.UserPlan]]]:
    """The batch's users by the version that scores them: the canary's share, and everyone else."""
    if canary is None:
        return [(ranker, due)]
    picked: list[b.UserPlan] = []
    rest: list[b.UserPlan] = []
    for p in due:
        (picked if canary.serves(p.user_id) else rest).append(p)
    return [(ranker, rest), (canary.ranker, picked)]


async def in_lanes(jobs: Sequence[Callable[[], Awaitable[int]]], lanes: int) -> int:
    """Run `jobs` in order, at most `lanes` at once, and sum what they return. When one raises, the others
    are cancelled and awaited before the first failure (in job order) is raised, so no chunk of a failed
    batch is still reading or writing when the batch is retried (a model call already running in a worker
    thread finishes there and its scores are dropped; list writes are fenced by offset anyway)."""
    if lanes <= 1:
        total = 0
        for job in jobs:
            total += await job()
        return total
    gate = asyncio.Semaphore(lanes)

    async def run(job: Callable[[], Awaitable[int]]) -> int:
        async with gate:
            return await job()

    tasks = [asyncio.create_task(run(job)) for job in jobs]
    try:
        return sum([await t for t in tasks])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _count(records: Records) -> int:
    return sum(len(r) for r in records.values())
