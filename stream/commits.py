"""Committing offsets: after the writes they cover, one at a time, overlapping the next batch.

A batch's commit round trip runs while the next batch is processed instead of delaying it; commits stay
in order and a rebalance or a stop waits for the one in flight.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError

from rankstream.stream import metrics as m
from rankstream.stream.recorder import Recorder

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 10.0


class CommitPipeline:
    """The last batch's commit, running in the background; `wait` before the next one starts."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        recorder: Recorder,
        commit: Callable[[Mapping[TopicPartition, int]], Awaitable[None]],
    ) -> None:
        self._consumer = consumer
        self._recorder = recorder
        self._commit = commit
        self._task: asyncio.Task[None] | None = None

    async def start(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Wait for the previous commit, then start this one."""
        await self.wait()
        if offsets:
            self._task = asyncio.create_task(self._run(offsets))

    def raise_failed(self) -> None:
        """Raise what the last commit raised, if it has finished; never waits (an idle replica calls it
        while the broker may be away, and must keep reporting progress meanwhile)."""
        task = self._task
        if task is not None and task.done():
            self._task = None
            task.result()

    async def wait(self) -> None:
        """Wait for the commit in flight (raises what it raised)."""
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _run(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._recorder.stage("commit"):
            await self._commit(offsets)
        self._record_lag(offsets)

    def _record_lag(self, committed: Mapping[TopicPartition, int]) -> None:
        assigned = self._consumer.assignment()
        for tp, offset in committed.items():
            if tp not in assigned:  # revoked while the batch was committed
                continue
            high = self._consumer.highwater(tp)
            if high is not None:
                m.LAG.labels(str(tp.partition)).set(max(high - offset, 0))


async def commit_owned(
    consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int], stopping: asyncio.Event
) -> None:
    """Commit the offsets of partitions still owned; retry while the broker is away (never skip ahead)."""
    delay = 0.5
    while True:
        owned = {tp: o for tp, o in offsets.items() if tp in consumer.assignment()}
        if not owned:
            return
        try:
            await consumer.commit(owned)
            return
        except CommitFailedError as exc:
            # Partitions moved to another replica mid-batch; it re-reads them and the fence absorbs the repeat.
            log.warning("commit refused after a rebalance, the new owner will replay: %s", exc)
            return
        except KafkaError as exc:
            if not exc.retriable and not isinstance(exc, KafkaConnectionError):
                raise
            m.ERRORS.labels(type(exc).__name__).inc()
            if stopping.is_set():
                # Shutting down: an uncommitted batch is replayed by the next owner, harmlessly.
                log.warning("commit failed while stopping; the batch will be replayed: %s", exc)
                return
            log.warning("commit failed, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


class FinishBeforeRevoke(ConsumerRebalanceListener):
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
                log.info("partitions revoked: %s", names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", names(assigned))


def names(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"
