"""The scorer on the real Kafka and Redis: events in -> lists out; bad events -> DLQ; no loss on a crash."""

import asyncio
import json

import pytest
from aiokafka import AIOKafkaConsumer

from rankstream.deploy.kafka_local import create_topics
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import group_lag, topic_size
from rankstream.stream.ranker import Ranker
from rankstream.stream.scorer import Scorer
from rankstream.stream.store import Store

from .conftest import ITEMS, scorer_settings, wait_for
from .serving import events_for, produce, run_until_drained, serving, settings_for, setup_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_events_become_lists_in_redis(stack, store: Store, tiny_model, topic: str) -> None:
    await setup_topics(stack, topic)
    evs = events_for(users=8, per_user=4)
    await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])
    s = settings_for(stack, topic, tiny_model)
    ranker = Ranker.load(tiny_model)
    scorer = Scorer(s, ranker, store)
    await run_until_drained(scorer, s)

    assert scorer.stats.events == len(evs)
    assert scorer.stats.dlq == 0
    for u in range(8):
        rec = await store.read_list(f"u{u}")
        assert rec is not None, f"no list for u{u}"
        assert rec["model_version"] == "vtest-tiny"
        assert rec["v"] == 1
        assert 1 <= len(rec["items"]) <= 5
        mine = [e.item_id for e in evs if e.user_id == f"u{u}"]
        # Items the user already has are never recommended back.
        assert not {i["item_id"] for i in rec["items"]} & set(mine)
        scores = [i["score"] for i in rec["items"]]
        assert scores == sorted(scores, reverse=True)
        # The stored history is the user's items newest first.
        hist = await store.read_history(f"u{u}")
        assert hist == list(reversed(mine))


async def test_malformed_events_go_to_dlq_with_reason(stack, store: Store, tiny_model, topic: str) -> None:
    await setup_topics(stack, topic)
    good = events_for(users=3, per_user=2)
    bad = [
        (b"x", b'{"user_id": "u1", "item_id": '),  # truncated JSON
        (b"x", b'{"user_id": "u1", "ts": 1}'),  # missing item_id
        (b"x", b"\xff\xfe not utf-8"),
        (b"x", json.dumps({"user_id": "u1", "item_id": "NOPE", "ts": 1320138000000}).encode()),  # unknown item
        (b"x", json.dumps({"user_id": "u1", "item_id": ITEMS[0], "ts": -5}).encode()),
        (b"x", b"[1, 2]"),
    ]
    records = [(e.user_id.encode(), e.to_bytes()) for e in good[:3]] + bad
    records += [(e.user_id.encode(), e.to_bytes()) for e in good[3:]]
    await produce(stack.bootstrap, topic, records)
    s = settings_for(stack, topic, tiny_model)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    await run_until_drained(scorer, s)

    assert scorer.stats.events == len(good)
    assert scorer.stats.dlq == len(bad)
    for u in range(3):
        assert await store.read_list(f"u{u}") is not None

    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = []
        async with asyncio.timeout(30):
            while len(got) < len(bad):
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    got.extend(recs)
    finally:
        await consumer.stop()
    reasons = sorted(dict(r.headers)["reason"].decode() for r in got)
    assert reasons == sorted(
        ["invalid_json", "invalid_item_id", "invalid_utf8", "unknown_item", "invalid_ts", "not_an_object"]
    )
    for r in got:
        h = dict(r.headers)
        assert h["source_topic"].decode() == topic
        assert int(h["source_offset"]) >= 0
    assert await topic_size(stack.bootstrap, f"{topic}.dlq") == len(bad)
    # The original bytes travel unchanged.
    assert sorted(r.value for r in got) == sorted(v for _, v in bad)


class CrashBeforeCommit(Scorer):
    """A scorer that dies after its first batch was written to Redis but before the commit."""

    async def commit(self, offsets):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated crash before commit")


async def test_crash_before_commit_loses_nothing(stack, store: Store, tiny_model, topic: str) -> None:
    await setup_topics(stack, topic)
    evs = events_for(users=6, per_user=5)
    await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])
    s = settings_for(stack, topic, tiny_model, batch_max_records=7)
    ranker = Ranker.load(tiny_model)

    crashing = CrashBeforeCommit(s, ranker, store)
    await crashing.start()
    with pytest.raises(RuntimeError, match="simulated crash"):
        await crashing.run()
    await crashing.close()
    assert crashing.stats.events > 0  # it consumed and wrote before dying
    assert sum((await group_lag(s.kafka_bootstrap, topic, s.group_id)).values()) == len(evs)

    survivor = Scorer(s, ranker, store)
    await run_until_drained(survivor, s)

    # Everything is reflected exactly once: each user's list reflects their last event, and the
    # history holds each of their items once, newest first.
    by_user: dict[str, list[ClickEvent]] = {}
    for e in evs:
        by_user.setdefault(e.user_id, []).append(e)
    for user, mine in by_user.items():
        rec = await store.read_list(user)
        assert rec is not None
        hist = await store.read_history(user)
        assert hist == list(dict.fromkeys(e.item_id for e in reversed(mine)))
    # The replayed first batch was recognised as already applied (fenced), not applied twice.
    assert survivor.stats.events == len(evs)


async def test_a_failed_commit_stops_an_idle_replica_too(stack, store: Store, tiny_model, topic: str) -> None:
    """Commits run in the background and a failure surfaces when the next one starts; a replica that has
    no next batch must learn of it as well, instead of serving on with its offsets never committed."""
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    evs = events_for(users=2, per_user=1)
    await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])
    s = settings_for(stack, topic, tiny_model)
    crashing = CrashBeforeCommit(s, Ranker.load(tiny_model), store)
    await crashing.start()
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            await asyncio.wait_for(crashing.run(), timeout=60)
    finally:
        await crashing.close()
    assert crashing.stats.events == len(evs)  # one batch, written, then nothing more to fetch


@pytest.mark.parametrize(("topup_ms", "expected"), [(500, [1, 2]), (0, [1])])
async def test_a_batch_takes_what_reached_the_broker_during_the_last_one(
    stack, store: Store, tiny_model, topic: str, topup_ms: int, expected: list[int]
) -> None:
    """The consumer buffers the first record that arrives after a batch is taken and fetches that
    partition no further until it is taken; with the top-up the next batch also takes the records that
    arrived after it (without, they wait a whole batch more)."""
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    evs = [(e.user_id.encode(), e.to_bytes()) for e in events_for(users=1, per_user=3)]
    s = scorer_settings(stack, topic, model_dir=tiny_model, batch_linger_ms=5_000, batch_topup_ms=topup_ms)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    await scorer.start()
    try:
        await produce(stack.bootstrap, topic, evs[:1])
        first = await scorer._poll()
        assert [r.offset for recs in first.values() for r in recs] == [0]
        await produce(stack.bootstrap, topic, evs[1:2])
        await asyncio.sleep(1.0)  # the consumer's waiting fetch brings record 1 into its buffer
        await produce(stack.bootstrap, topic, evs[2:])
        await asyncio.sleep(1.0)  # record 2 stays on the broker: its partition has buffered data
        batch = await scorer._poll()
        assert [r.offset for recs in batch.values() for r in recs] == expected
    finally:
        await scorer.close()


async def _assigned(scorer: Scorer) -> bool:
    return bool(scorer.assignment())


async def test_a_user_still_clicking_is_scored_once_when_they_pause(stack, store: Store, tiny_model, topic) -> None:  # type: ignore[no-untyped-def]
    await setup_topics(stack, topic)
    s = scorer_settings(stack, topic, model_dir=tiny_model, batch_linger_ms=50, user_quiet_ms=1_000)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    async with serving(scorer):
        await wait_for(lambda: _assigned(scorer), limit_s=60)
        evs = events_for(users=1, per_user=3)
        await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])
        rec = await wait_for(lambda: store.read_list("u0"), limit_s=30)
        assert scorer.stats.lists_written == 1 and scorer.stats.coalesced == 2  # one scoring for the three
        assert await store.read_history("u0") == [e.item_id for e in reversed(evs)]
        assert rec["model_version"] == "vtest-tiny"
    assert sum((await group_lag(s.kafka_bootstrap, topic, s.group_id)).values()) == 0


async def test_users_held_back_are_not_committed_and_are_scored_at_stop(stack, store: Store, tiny_model, topic) -> None:  # type: ignore[no-untyped-def]
    await setup_topics(stack, topic)
    s = scorer_settings(stack, topic, model_dir=tiny_model, batch_linger_ms=50, user_quiet_ms=10_000)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    evs = events_for(users=2, per_user=2)
    async with serving(scorer):
        await wait_for(lambda: _assigned(scorer), limit_s=60)
        await produce(stack.bootstrap, topic, [(e.user_id.encode(), e.to_bytes()) for e in evs])

        async def all_held() -> bool:
            return len(scorer._held) == len(evs)

        await wait_for(all_held, limit_s=30)
        assert await store.read_list("u0") is None and await store.read_list("u1") is None
        await asyncio.sleep(1.0)  # the batches' commits have run: none passed a held event
        assert sum((await group_lag(s.kafka_bootstrap, topic, s.group_id)).values()) == len(evs)
    for u in ("u0", "u1"):
        assert await store.read_history(u) == [e.item_id for e in reversed(evs) if e.user_id == u]
    assert sum((await group_lag(s.kafka_bootstrap, topic, s.group_id)).values()) == 0


async def test_a_batch_fetched_before_a_rebalance_is_not_processed(stack, store: Store, tiny_model, topic) -> None:  # type: ignore[no-untyped-def]
    """A revocation drops the events held back for a user. Records fetched before it and processed after
    it would write that user's history without them, and the held events, replayed by the next owner,
    would then be fenced out as already applied: the batch is left to the next owner instead."""
    await asyncio.to_thread(create_topics, stack.bootstrap, {topic: 1, f"{topic}.dlq": 1})
    evs = [(e.user_id.encode(), e.to_bytes()) for e in events_for(users=1, per_user=3)]
    s = scorer_settings(stack, topic, model_dir=tiny_model, batch_linger_ms=200, user_quiet_ms=10_000)
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    await scorer.start()
    other = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap, group_id=s.group_id, enable_auto_commit=False)
    try:
        await produce(stack.bootstrap, topic, evs[:2])

        async def both_held() -> bool:
            batch = await scorer._poll()
            assert await scorer._process_and_commit(batch, scorer._generation, hold=True) is None
            return len(scorer._held) == 2  # u0 is still clicking

        await wait_for(both_held, limit_s=60)
        await produce(stack.bootstrap, topic, evs[2:])
        generation = scorer._generation

        async def polled() -> dict:  # type: ignore[type-arg]
            return await scorer._poll()

        last = await wait_for(polled, limit_s=30)
        await other.start()  # joins the group: the scorer's partition is revoked, its held events dropped

        async def revoked() -> bool:
            return scorer._generation != generation

        await wait_for(revoked, limit_s=60)
        assert not scorer._held
        assert await scorer._process_and_commit(last, generation, hold=False) is None
        assert await store.read_list("u0") is None  # not written from the stale batch
    finally:
        await other.stop()
        await scorer.close()
    s2 = scorer_settings(stack, topic, model_dir=tiny_model, batch_linger_ms=50)
    await run_until_drained(Scorer(s2, Ranker.load(tiny_model), store), s2)
    assert await store.read_history("u0") == [e.item_id for e in reversed(events_for(users=1, per_user=3))]
