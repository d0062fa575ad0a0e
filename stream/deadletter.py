"""The dead-letter topic: every record the scorer cannot turn into a list goes there, with the reason.

A dead letter carries the original key and value and the headers `reason`, `detail`, `source_topic`,
`source_partition` and `source_offset` (docs/dead-letters.md lists the reasons). Sends are queued while
the batch goes on and confirmed before its offsets are committed, so none is lost.
"""

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from rankstream.stream.events import Rejected

log = logging.getLogger(__name__)

_DETAIL_MAX = 500


@dataclass(frozen=True)
class Source:
    """Where a record came from, as the dead letter's headers name it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class _Pending:
    source: Source
    headers: list[tuple[str, bytes]]
    delivery: "asyncio.Future[object]"


def _retrieve(fut: "asyncio.Future[object]") -> None:
    if not fut.cancelled():
        fut.exception()


class DeadLetters:
    """Queues dead letters for one batch (`send`), then confirms them (`flush`) before the commit."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, max_value_bytes: int) -> None:
        self._producer = producer
        self._topic = topic
        # What is kept of a value the broker refuses as too large (it is already a rejected record).
        self._max_value_bytes = max_value_bytes
        self._pending: list[_Pending] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def send(self, source: Source, rejected: Rejected) -> None:
        """Queue one dead letter (the caller counts it); an internal error is logged once, here."""
        where = f"{source.topic}[{source.partition}]@{source.offset}"
        if rejected.reason in ("internal_error", "crash_loop", "bad_state"):
            log.warning("dead-lettered %s: %s: %s", where, rejected.reason, rejected.detail)
        else:
            log.info("dead-lettered %s: %s", where, rejected.reason)
        headers = [
            ("reason", rejected.reason.encode()),
            ("detail", rejected.detail[:_DETAIL_MAX].encode("utf-8", "replace")),
            ("source_topic", source.topic.encode()),
            ("source_partition", str(source.partition).encode()),
            ("source_offset", str(source.offset).encode()),
        ]
        self._pending.append(_Pending(source, headers, await self._enqueue(source.key, source.value, headers)))

    async def flush(self) -> None:
        """Wait until every queued dead letter is in the topic (raises the producer's error if one is not)."""
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*(p.delivery for p in pending), return_exceptions=True)
        retries = []
        for p, result in zip(pending, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                retries.append(await self._enqueue_cut(p.source.key, p.source.value, p.headers))
            elif isinstance(result, BaseException):
                self._forget(pending)
                raise result
        await asyncio.gather(*retries)

    def discard(self) -> None:
        """Drop what is queued (the batch failed and will be retried, sending its dead letters again)."""
        self._forget(self._pending)
        self._pending = []

    @staticmethod
    def _forget(pending: list[_Pending]) -> None:
        for p in pending:
            p.delivery.add_done_callback(_retrieve)

    async def _enqueue(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> "asyncio.Future[object]":
        try:
            return await self._producer.send(self._topic, value=value, key=key, headers=headers)
        except MessageSizeTooLargeError:  # the producer's own size check, before anything was sent
            return await self._enqueue_cut(key, value, headers)

    async def _enqueue_cut(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> "asyncio.Future[object]":
        """The dead letter with its value and key cut to what the broker takes, and the original size named."""
        value, key = value or b"", key or b""
        cut = [*headers, ("truncated_from", str(len(value)).encode())]
        return await self._producer.send(
            self._topic, value=value[: self._max_value_bytes], key=key[: self._max_value_bytes], headers=cut
        )
