"""The scorer: consume click events, rank candidates per user in micro-batches, write lists, commit.

Offsets are committed only after the batch's Redis writes and dead-letter sends succeeded
(at-least-once input); the fenced Redis write makes a replayed batch harmless (effectively-once output).
"""

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError

from rankstream.stream import batch as b
from rankstream.stream import metrics as m
from rankstream.stream.deadletter import DeadLetters, Source
from rankstream.stream.errors import ArtifactError, ConfigError, RankstreamError, StoreError
from rankstream.stream.events import Rejected, internal_error, parse_event
from rankstream.stream.ranker import Ranker
from rankstream.stream.settings import Settings
from rankstream.stream.signals import ItemStats
from rankstream.stream.store import ListWrite, Store, UserState

log = logging.getLogger(__name__)

_NEIGHBOUR_CACHE_MAX = 200_000
_BACKOFF_MAX_S = 10.0


@dataclass
class Stats:
    events: int = 0
    dlq: int = 0
    lists_written: int = 0
    stale_skipped: int = 0
    coalesced: int = 0
    batches: int = 0
    pairs: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    events_by_version: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall time per batch stage, summed


class _FinishBeforeRevoke(ConsumerRebalanceListener):
    """On a rebalance, the batch in flight finishes and commits before its partitions move.

    The group waits in this callback (up to the rebalance timeout), so the next owner starts from the
    committed offsets instead of replaying the batch; the write fence would absorb a replay anyway.
    """

    def __init__(
        self,
        batch_lock: asyncio.Lock,
        committed: Callable[[], Awaitable[None]],
        forget: Callable[[set[TopicPartition]], None],
    ) -> None:
        self._batch_lock = batch_lock
        self._committed = committed
        self._forget = forget

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._committed()
            self._forget(revoked)
            if revoked:
                log.info("partitions revoked: %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))


def _names(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"


class Scorer:
    """One scorer replica. `run()` until `stop()`; owns its Kafka clients, not the store or ranker."""

    def __init__(self, settings: Settings, ranker: Ranker, store: Store, *, latency_samples: int = 0) -> None:
        self.settings = settings
        try:
            self.check_servable(ranker)
        except ArtifactError as exc:
            raise ConfigError(str(exc)) from exc
        self.ranker = ranker
        self.store = store
        self.stats = Stats()
        # (written at, unix s; event -> Redis latency, ms) of the most recent events, for benchmarks; bounded.
        # Benchmarks ask for samples; a served replica keeps none (the histogram metric has the latencies).
        self.latencies: deque[tuple[float, float]] = deque(maxlen=latency_samples)
        self._stopping = asyncio.Event()
        self._started = False
        self._catalog: dict[str, str] = {}
        self._trending: list[str] = []
        self._item_stats: dict[str, ItemStats] = {}
        self._neighbours: dict[str, list[str]] = {}
        common = settings.kafka_client_options()
        self._batch_lock = asyncio.Lock()
        self._consumer = AIOKafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **common,
            **settings.kafka_consumer_options,
        )
        # The last batch's commit, running while the next batch is processed (see `run`).
        self._committing: asyncio.Task[None] | None = None
        # Events of users held back for a later batch (Settings.user_quiet_ms): consumed, not yet written,
        # so no commit passes them; and per partition, the offset after the last record processed.
        self._held: list[b.Valid] = []
        self._fetched: dict[TopicPartition, int] = {}
        listener = _FinishBeforeRevoke(self._batch_lock, self._committed, self._forget)
        self._consumer.subscribe([settings.topic], listener=listener)
        self._producer = AIOKafkaProducer(acks="all", **common)
        self._dlq = DeadLetters(self._producer, settings.dlq_topic, settings.max_event_bytes)
        # Names this process to the crash-loop guard: a batch started by another owner and never
        # followed by a later one means that owner stopped inside it.
        self._owner = uuid.uuid4().hex[:12]

    async def start(self) -> None:
        if self._started:
            raise RankstreamError("Scorer.start() called twice; make a new Scorer")
        self._started = True
        self._catalog = await self.store.read_catalog()
        if not self._catalog:
            raise RankstreamError("the catalog in Redis is empty: run `rankstream load` first")
        self._trending = await self.store.read_trending()
        self._item_stats = await self.store.read_item_stats()
        if not self._item_stats and self.ranker.signals is not None:
            raise RankstreamError("the item statistics in Redis are empty: run `rankstream load` again")
        await self._producer.start()
        await self._consumer.start()
        # What is loaded by now (tables, model, clients) lives as long as the process: out of the cyclic
        # collector's reach, a full collection no longer walks it (measured in the stream benchmark's
        # process: a full collection paused it for 110-130 ms before, 3-8 ms after).
        gc.collect()
        gc.freeze()
        log.info(
            "scorer started: topic=%s group=%s model=%s catalog=%d items",
            self.settings.topic,
            self.settings.group_id,
            self.ranker.version,
            len(self._catalog),
        )

    def use(self, ranker: Ranker) -> None:
        """Serve `ranker` from the next batch on; the batch in flight finishes with the version it started with."""
        old, self.ranker = self.ranker, ranker
        m.MODEL.labels(old.version).set(0)
        m.MODEL.labels(ranker.version).set(1)

    def check_servable(self, ranker: Ranker) -> None:
        """ArtifactError when this scorer's settings cannot serve `ranker`."""
        if self.settings.rerank_top and ranker.linear is None:
            raise ArtifactError(
                f"model {ranker.version} carries no linear part (linear.json), which RANKSTREAM_RERANK_TOP="
                f"{self.settings.rerank_top} needs; re-export it with this version, or set RANKSTREAM_RERANK_TOP=0"
            )

    def assignment(self) -> set[TopicPartition]:
        """The partitions this replica owns now (empty until the group has assigned them)."""
        return set(self._consumer.assignment())

    def has_item_stats(self) -> bool:
        """Whether a model that reads serve-time signals can be served (the statistics load at start)."""
        return bool(self._item_stats)

    def sample_titles(self, n: int = 50) -> list[str]:
        """Some catalog titles, for warming a new model up at serving shapes."""
        return [t for _, t in zip(range(n), self._catalog.values(), strict=False)]

    def stop(self) -> None:
        """Ask the loop to finish the in-flight batch, commit and return (safe from a signal handler)."""
        self._stopping.set()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._producer.stop()

    async def run(self) -> Stats:
        backoff = 0.5
        m.MODEL.labels(self.ranker.version).set(1)
        while not self._stopping.is_set():
            records = await self._poll()
            if not records and not self._held:
                continue
            failed = await self._process_and_commit(records, hold=True)
            if failed is not None:
                await self._back_off(records, backoff, failed)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.5
        if self._held:  # score the users held back now rather than leave them to the next owner
            if (failed := await self._process_and_commit({}, hold=False)) is not None:
                log.warning("users held back not scored while stopping; the next owner replays them: %s", failed)
        await self._committed()
        log.info("scorer stopping: %s", self.stats)
        return self.stats

    async def _process_and_commit(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], *, hold: bool
    ) -> Exception | None:
        """Process a batch and start its commit; the store or Kafka error that failed it, if one did."""
        # Held while a batch is processed; a revocation takes it, then waits for the batch's commit
        # (see _FinishBeforeRevoke).
        async with self._batch_lock:
            try:
                offsets = await self.process(records, hold=hold)
            except (StoreError, KafkaError) as exc:
                m.ERRORS.labels(type(exc).__name__).inc()
                return exc
            # The commit round trip overlaps the next batch instead of delaying it; commits stay in order
            # (one at a time) and still follow the writes they cover.
            await self._committed()
            if offsets:
                self._committing = asyncio.create_task(self._commit_batch(offsets))
        return None

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what this replica holds of revoked partitions: uncommitted, their next owner replays it."""
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

    async def _commit_batch(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._stage("commit"):
            await self.commit(offsets)
        self._record_lag(offsets)

    async def _committed(self) -> None:
        """Wait for the last batch's commit (raises what it raised)."""
        task, self._committing = self._committing, None
        if task is not None:
            await task

    async def _back_off(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], delay: float, exc: Exception
    ) -> None:
        """Backpressure: nothing of the batch is committed; rewind it, and stop fetching while we wait.

        Pausing keeps the consumer from buffering new records (and memory bounded) however long Redis or
        Kafka stays away; the group membership stays alive meanwhile, so partitions do not move.
        """
        log.warning(
            "batch of %d records failed, paused, retrying in %.1fs: %s",
            sum(len(r) for r in records.values()),
            delay,
            exc,
        )
        assigned = list(self._consumer.assignment())
        self._consumer.pause(*assigned)
        m.PAUSED.set(1)
        for tp, recs in records.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, recs[0].offset)
        try:
            await asyncio.sleep(delay)
        finally:
            self._consumer.resume(*[tp for tp in assigned if tp in self._consumer.assignment()])
            m.PAUSED.set(0)

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            m.STAGE_SECONDS.labels(name).observe(took)
            self.stats.stage_s[name] = self.stats.stage_s.get(name, 0.0) + took

    def _record_lag(self, committed: Mapping[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        for tp, offset in committed.items():
            if tp not in assigned:  # revoked while the batch was committed
                continue
            high = self._consumer.highwater(tp)
            if high is not None:
                m.LAG.labels(str(tp.partition)).set(max(high - offset, 0))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit offsets whose events are in Redis; retry while the broker is away (never skip ahead)."""
        delay = 0.5
        while True:
            owned = {tp: o for tp, o in offsets.items() if tp in self._consumer.assignment()}
            if not owned:
                return
            try:
                await self._consumer.commit(owned)
                return
            except CommitFailedError as exc:
                # Partitions moved to another replica mid-batch; it re-reads them and the fence absorbs
                # the repeat.
                log.warning("commit refused after a rebalance, the new owner will replay: %s", exc)
                return
            except KafkaError as exc:
                if not exc.retriable and not isinstance(exc, KafkaConnectionError):
                    raise
                m.ERRORS.labels(type(exc).__name__).inc()
                if self._stopping.is_set():
                    # Shutting down: an uncommitted batch is replayed by the next owner, harmlessly.
                    log.warning("commit failed while stopping; the batch will be replayed: %s", exc)
                    return
                log.warning("commit failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def process(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], *, hold: bool = True
    ) -> dict[TopicPartition, int]:
        """Validate, dead-letter, plan, score, write: everything for one batch except the commit, whose
        offsets it returns. With `hold`, users still clicking wait for a later batch (`user_quiet_ms`).

        Every record ends scored or dead-lettered: a failure that belongs to one record or one user's
        stored state is that record's or user's dead letter; only Redis or Kafka being away fails the batch.
        """
        try:
            return await self._process(records, hold)
        except BaseException:
            self._dlq.discard()
            raise

    async def _process(
        self, fetched: Mapping[TopicPartition, Sequence[ConsumerRecord]], hold: bool
    ) -> dict[TopicPartition, int]:
        records, doomed = await self._guarded(fetched)
        held_before = self._held
        valid: list[b.Valid] = list(held_before)  # older than the batch's events of the same users
        for tp, recs in records.items():
            for r in recs:
                try:
                    if (rej := doomed.get((tp, r.offset))) is not None:
                        raise rej
                    valid.append(self._validate(tp, r))
                except Rejected as rej:
                    await self._reject(Source(tp.topic, tp.partition, r.offset, r.key, r.value), rej)
        m.BATCH_RECORDS.observe(sum(len(r) for r in records.values()))
        by_user = b.group_by_user(valid)
        with self._stage("read"):
            states, bad = await self.store.read_states(list(by_user))
            for user, detail in bad.items():
                await self._reject_user(by_user.pop(user), Rejected("bad_state", detail))
            plans = self._plans(by_user, states)
            quiet = self.settings.user_quiet_ms if hold else 0
            due, held = b.hold_back(plans, time.time() * 1000, quiet)
            neighbours = await self._neighbours_for(b.recent_items(due))
        # One version scores the whole batch: the ranker reference is read once, here.
        ranker = self.ranker
        rejected = 0
        for chunk in b.oldest_first_chunks(due, self.settings.score_chunk_users):
            rejected += await self._score_and_write(ranker, chunk, by_user, neighbours)
        if self._dlq.pending:
            with self._stage("write"):
                await self._dlq.flush()
        planned = {p.user_id for p in plans}
        # Events already reflected (a replayed batch): their lists were written before.
        self._observe_written([v for u, evs in by_user.items() if u not in planned for v in evs])
        waiting = {p.user_id for p in held}
        scored = sum(len(evs) for u, evs in by_user.items() if u not in waiting) - rejected
        self._count_batch(ranker.version, scored, due)
        # Only now, when nothing of the batch can fail any more (a failed batch is rewound and retried
        # with the users held before it).
        self._held = [v for p in held for v in by_user[p.user_id]]
        for tp, recs in records.items():
            self._fetched[tp] = recs[-1].offset + 1
            if len(recs) < len(fetched[tp]):  # the guard took one record: fetch the rest again
                self._consumer.seek(tp, recs[-1].offset + 1)
        return self._commit_offsets(records, held_before)

    def _validate(self, tp: TopicPartition, r: ConsumerRecord) -> b.Valid:
        """The record as a valid event, or Rejected: any failure here is this record's, never the batch's."""
        try:
            ev = parse_event(r.value, self.settings.max_event_bytes)
            if ev.item_id not in self._catalog:
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

    async def _guarded(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]
    ) -> tuple[dict[TopicPartition, Sequence[ConsumerRecord]], dict[tuple[TopicPartition, int], Rejected]]:
        """The crash-loop guard: the records to process now, and those to dead-letter unprocessed.

        Where a previous owner stopped inside a batch (kill -9, out of memory, a native crash), that batch's
        range is taken one record at a time, so the record that stops replicas is found; once it has
        stopped `crash_loop_limit` replicas in a row it is dead-lettered and the partition moves on.
        """
        ranges = {f"{tp.topic}:{tp.partition}": (recs[0].offset, recs[-1].offset) for tp, recs in records.items()}
        attempts = await self.store.guard(self.settings.group_id, self._owner, ranges)
        kept: dict[TopicPartition, Sequence[ConsumerRecord]] = {}
        doomed: dict[tuple[TopicPartition, int], Rejected] = {}
        for tp, recs in records.items():
            attempt = attempts[f"{tp.topic}:{tp.partition}"]
            kept[tp] = recs[:1] if attempt.careful else recs
            if attempt.starts > self.settings.crash_loop_limit:
                stopped = attempt.starts - 1
                doomed[(tp, recs[0].offset)] = Rejected("crash_loop", f"{stopped} replicas stopped processing it")
        return kept, doomed

    async def _score_and_write(
        self,
        ranker: Ranker,
        chunk: list[b.UserPlan],
        by_user: Mapping[str, list[b.Valid]],
        neighbours: Mapping[str, Sequence[str]],
    ) -> int:
        """Score one chunk of users and write their lists; how many events were dead-lettered instead."""
        with self._stage("score"):
            writes, n_pairs, failed = await self._score(ranker, chunk, neighbours)
        chunk = [p for p in chunk if p.user_id not in failed]
        quality = b.live_quality(chunk)
        with self._stage("write"):
            written = await self.store.write_lists(writes, quality)
        failed |= {u: Rejected("bad_state", detail) for u, detail in written.bad.items()}
        for user, rej in failed.items():
            await self._reject_user(by_user[user], rej)
        self._observe_written([v for p in chunk if p.user_id not in failed for v in by_user[p.user_id]])
        for version, (checked, hits) in quality.items():
            m.LIVE_EVENTS.labels(version).inc(checked)
            m.LIVE_HITS.labels(version).inc(hits)
        m.LISTS_WRITTEN.inc(written.applied)
        m.STALE_SKIPPED.inc(len(writes) - written.applied - len(written.bad))
        m.PAIRS.inc(n_pairs)
        st = self.stats
        st.lists_written += written.applied
        st.stale_skipped += len(writes) - written.applied - len(written.bad)
        st.pairs += n_pairs
        return sum(len(by_user[u]) for u in failed)

    def _count_batch(self, version: str, new: int, due: Sequence[b.UserPlan]) -> None:
        """Batch counters; `new`: events whose lists are written now (or were already), not dead-lettered."""
        coalesced = sum(p.events - 1 for p in due)
        m.EVENTS.inc(new)
        m.COALESCED.inc(coalesced)
        st = self.stats
        st.batches += 1
        st.events += new
        st.coalesced += coalesced
        if new:
            st.events_by_version[version] = st.events_by_version.get(version, 0) + new

    async def _reject(self, source: Source, rejected: Rejected) -> None:
        st = self.stats
        st.dlq += 1
        st.dlq_reasons[rejected.reason] = st.dlq_reasons.get(rejected.reason, 0) + 1
        await self._dlq.send(source, rejected)

    async def _reject_user(self, events: Sequence[b.Valid], rejected: Rejected) -> None:
        """Dead-letter every event of one user in this batch (their state or scoring failed, not the batch's)."""
        for v in events:
            await self._reject(Source(v.topic, v.partition, v.offset, v.key, v.value), rejected)

    def _commit_offsets(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], held_before: Sequence[b.Valid]
    ) -> dict[TopicPartition, int]:
        """Per partition this batch touched: past every record processed, but not past a held event."""
        touched = {*records, *(TopicPartition(v.topic, v.partition) for v in (*held_before, *self._held))}
        offsets = {tp: self._fetched[tp] for tp in touched}
        for v in self._held:
            tp = TopicPartition(v.topic, v.partition)
            offsets[tp] = min(offsets[tp], v.offset)
        return offsets

    def _observe_written(self, events: Sequence[b.Valid]) -> None:
        """Event -> Redis latency of events whose lists are written now."""
        written_ms = time.time() * 1000
        for v in events:
            latency_ms = max(written_ms - v.timestamp_ms, 0.0)
            m.EVENT_TO_REDIS.observe(latency_ms / 1000)
            self.latencies.append((written_ms / 1000, latency_ms))

    async def _score(
        self, ranker: Ranker, plans: list[b.UserPlan], neighbours: Mapping[str, Sequence[str]]
    ) -> tuple[list[ListWrite], int, dict[str, Rejected]]:
        """Each user's list; users whose candidates, signals or scoring raised are returned apart, with
        the error as their dead-letter reason, so one user's input never fails the others."""
        failed: dict[str, Rejected] = {}
        per_user: list[tuple[b.UserPlan, list[str], list[tuple[str, str]]]] = []
        for p in plans:
            try:
                per_user.append(
                    (p, *b.candidate_pairs(p, neighbours, self._trending, self._catalog, self.settings.candidates))
                )
            except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
                failed[p.user_id] = internal_error(exc)
        signals = None
        if ranker.signals is not None:  # the model also reads serve-time signals: candidates' neighbours too
            tables = {**neighbours, **await self._neighbours_for(b.signal_items(c for _, c, _ in per_user))}
            kept, signals = [], []
            for p, cands, pairs in per_user:
                try:
                    signals.append(b.user_signals(p, cands, tables, self._item_stats, self._catalog))
                    kept.append((p, cands, pairs))
                except Exception as exc:  # noqa: BLE001 - as above
                    failed[p.user_id] = internal_error(exc)
            per_user = kept
        t0 = time.perf_counter()
        lists = [pairs for _, _, pairs in per_user]
        top = self.settings.rerank_top
        try:
            scores = await asyncio.to_thread(ranker.score_lists, lists, signals, top=top)
        except Exception:  # noqa: BLE001 - find the user whose input the model cannot take
            scores = await self._score_one_by_one(ranker, per_user, signals, failed)
            per_user = [u for u in per_user if u[0].user_id not in failed]
            lists = [pairs for _, _, pairs in per_user]
        n_pairs = sum(min(len(pairs), top) if top else len(pairs) for pairs in lists)  # pairs cross-encoded
        log.debug("scored %d pairs for %d users in %.3fs", n_pairs, len(plans), time.perf_counter() - t0)
        writes = [
            ListWrite(
                p.user_id,
                p.history,
                b.top_k(cands, s, self.settings.top_k),
                ranker.version,
                p.last.partition,
                p.last.offset,
                p.last.timestamp_ms,
                p.last.topic,
            )
            for (p, cands, _), s in zip(per_user, scores, strict=True)
        ]
        return writes, n_pairs, failed

    async def _score_one_by_one(
        self,
        ranker: Ranker,
        per_user: Sequence[tuple[b.UserPlan, list[str], list[tuple[str, str]]]],
        signals: Sequence[np.ndarray] | None,
        failed: dict[str, Rejected],
    ) -> list[np.ndarray]:
        """Score users one at a time after a batch raised; those that raise again join `failed`."""
        scores = []
        for i, (p, _, pairs) in enumerate(per_user):
            sig = None if signals is None else [signals[i]]
            try:
                scores += await asyncio.to_thread(ranker.score_lists, [pairs], sig, top=self.settings.rerank_top)
            except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
                failed[p.user_id] = internal_error(exc)
        return scores

    async def _neighbours_for(self, items: list[str]) -> dict[str, list[str]]:
        missing = [it for it in items if it not in self._neighbours]
        if missing:
            if len(self._neighbours) > _NEIGHBOUR_CACHE_MAX:
                self._neighbours.clear()  # bounded memory; the tables are cheap to re-read
            self._neighbours.update(await self.store.read_neighbours(missing))
        return {it: self._neighbours.get(it, []) for it in items}
