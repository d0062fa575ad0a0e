"""The dead-letter sender's own logic: headers, and a value the producer refuses as too large."""

import asyncio

from aiokafka.errors import MessageSizeTooLargeError

from rankstream.stream.deadletter import DeadLetters, Source
from rankstream.stream.events import Rejected


class SizeLimitedProducer:
    """Refuses a record over `limit` bytes the way aiokafka's producer does, before sending; keeps the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[bytes, bytes, dict[str, bytes]]] = []

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: list[tuple[str, bytes]]):  # type: ignore[no-untyped-def]
        if len(value) + len(key) > self.limit:
            raise MessageSizeTooLargeError()
        self.sent.append((key, value, dict(headers)))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_dead_letter_keeps_the_record_and_says_where_it_came_from() -> None:
    producer = SizeLimitedProducer(limit=10_000)
    dlq = DeadLetters(producer, "clicks.dlq", max_value_bytes=100)  # type: ignore[arg-type]
    await dlq.send(Source("clicks", 2, 41, b"u1", b"[1, 2]"), Rejected("not_an_object", "list"))
    await dlq.flush()
    ((key, value, headers),) = producer.sent
    assert (key, value) == (b"u1", b"[1, 2]")
    assert headers == {
        "reason": b"not_an_object",
        "detail": b"list",
        "source_topic": b"clicks",
        "source_partition": b"2",
        "source_offset": b"41",
    }
    assert dlq.pending == 0


async def test_a_value_too_large_for_the_broker_is_cut_and_its_size_named() -> None:
    producer = SizeLimitedProducer(limit=1_000)
    dlq = DeadLetters(producer, "clicks.dlq", max_value_bytes=100)  # type: ignore[arg-type]
    await dlq.send(Source("clicks", 0, 7, b"u1", b"x" * 5_000), Rejected("too_large", "5000 bytes > 100"))
    await dlq.flush()
    ((key, value, headers),) = producer.sent
    assert key == b"u1" and value == b"x" * 100
    assert headers["truncated_from"] == b"5000" and headers["reason"] == b"too_large"
