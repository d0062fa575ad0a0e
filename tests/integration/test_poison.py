"""Nothing stops a partition: poisoned Redis state and a record that kills replicas, on the real services."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.events import ClickEvent
from rankstream.stream.ranker import Ranker
from rankstream.stream.scorer import Scorer
from rankstream.stream.store import Store

from .conftest import ITEMS, scorer_settings
from .serving import run_until_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def produce_events(stack, topic: str, values: list[tuple[str, bytes]]) -> list[int]:  # type: ignore[no-untyped-def]
    """Send (key, value) records in order; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        return [(await (await producer.send(topic, key=k.encode(), value=v))).offset for k, v in values]
    finally:
        await producer.stop()


def event(user: str, n: int) -> tuple[str, bytes]:
    ev = ClickEvent(user_id=user, item_id=ITEMS[n % len(ITEMS)], ts=f"2011-11-01T10:{n % 60:02d}:00Z")
    return user, ev.to_bytes()


async def dead_letters(stack, topic: str, n: int) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The first n dead letters' headers."""
    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < n:
                for recs in (await consumer.getmany(timeout_ms=500)).values():
                    got += [{k: v.decode() for k, v in r.headers} for r in recs]
    finally:
        await consumer.stop()
    return got


async def test_a_poisoned_user_is_dead_lettered_and_the_batch_goes_on(stack, store: Store, tiny_model, topic) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    r = store.client
    await r.set("hist:{p4}", "garbage")  # as in the outage report
    await r.hset("hist:{p5}", mapping={"items": "a", "p": f"{topic}:0", "o": "x"})
    records = [event(u, n) for n in range(4) for u in ("u1", "p4", "u2", "p5")]
    await produce_events(stack, topic, records)
    s = scorer_settings(stack, topic, model_dir=tiny_model, batch_max_records=50, batch_linger_ms=50)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    await run_until_drained(scorer, s)
    for u in ("u1", "u2"):
        rec = await store.read_list(u)
        assert rec is not None and rec["offset"] == max(i for i, (k, _) in enumerate(records) if k == u)
    letters = await dead_letters(stack, topic, 8)
    assert len(letters) == 8 and {d["reason"] for d in letters} == {"bad_state"}
    details = {d["detail"].split(": ")[0] for d in letters}
    assert details == {"hist:{p4}", "hist:{p5}"}
    assert scorer.stats.dlq_reasons == {"bad_state": 8} and scorer.stats.events == 8
    # The operator's repair: delete the user's keys; the next event gets a list.
    await r.delete("hist:{p4}", "rec:{p4}")
    await produce_events(stack, topic, [event("p4", 9)])
    await run_until_drained(Scorer(s, Ranker.load(tiny_model), store), s)
    assert (await store.read_list("p4")) is not None


class Crash(BaseException):
    """What no `except Exception` catches: stands for a native crash or the OOM killer."""


class CrashesOnPoison(Scorer):
    """A replica that dies (without committing) whenever it processes a record carrying b"poison"."""

    def _validate(self, tp, r):  # type: ignore[no-untyped-def]
        if r.value and b"poison" in r.value:
            raise Crash(r.offset)
        return super()._validate(tp, r)


async def test_a_record_that_keeps_killing_replicas_is_dead_lettered(stack, store: Store, tiny_model, topic) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    before = [event(f"u{n % 5}", n) for n in range(20)]
    after = [event(f"u{n % 5}", n) for n in range(20, 40)]
    poison = ("u0", b'{"user_id": "u0", "item_id": "poison", "ts": 1}')
    offsets = await produce_events(stack, topic, [*before, poison, *after])
    s = scorer_settings(
        stack, topic, model_dir=tiny_model, batch_max_records=50, batch_linger_ms=50, crash_loop_limit=3
    )
    ranker = Ranker.load(tiny_model)
    crashed_at = []
    # The first replica dies inside a whole batch; the next ones take that range a record at a time and
    # die on the poison itself, until it has stopped `crash_loop_limit` of them in a row.
    for _ in range(4):
        scorer = CrashesOnPoison(s, ranker, store)
        await scorer.start()
        with pytest.raises(Crash) as info:
            await scorer.run()
        crashed_at.append(info.value.args[0])
        await scorer.close()  # gone without a commit, like a killed process
    assert crashed_at == [offsets[20]] * 4
    last = CrashesOnPoison(s, ranker, store)
    await run_until_drained(last, s)
    letters = await dead_letters(stack, topic, 1)
    assert [(d["reason"], d["source_offset"]) for d in letters] == [("crash_loop", str(offsets[20]))]
    assert letters[0]["detail"] == "3 replicas stopped processing it"
    for u in (f"u{i}" for i in range(5)):
        rec = await store.read_list(u)
        assert rec is not None and rec["offset"] == max(
            o for o, (k, _) in zip(offsets, [*before, poison, *after], strict=True) if k == u
        )
