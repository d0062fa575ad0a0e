"""The Redis write fence on the real server: a list never goes backwards."""

import time

import pytest

from rankstream.stream.guard import Attempt, Guard, guard_key
from rankstream.stream.livestore import share_keys
from rankstream.stream.store import ListWrite, Store, rec_key
from rankstream.stream.tables import Tables

from .conftest import ITEM_STATS, NEIGHBOURS, TRENDING

pytestmark = pytest.mark.integration


def write(offset: int, partition: int = 0, ts: int = 1_000, items=(("a", 1.0),)) -> ListWrite:  # type: ignore[no-untyped-def]
    return ListWrite("u1", ("x", "y"), tuple(items), "v1", partition, offset, ts)


async def test_newer_offset_wins_and_older_is_skipped(store: Store) -> None:
    assert (await store.write_lists([write(10, items=(("new", 2.0),))])).applied == 1
    assert (await store.write_lists([write(9, items=(("old", 1.0),))])).applied == 0
    assert (await store.write_lists([write(10, items=(("same", 1.0),))])).applied == 0  # a replay of the same event
    rec = await store.read_list("u1")
    assert rec is not None
    assert [i["item_id"] for i in rec["items"]] == ["new"]
    assert rec["offset"] == 10 and rec["partition"] == 0 and rec["model_version"] == "v1"
    states, bad = await store.read_states(["u1", "nobody"])
    assert bad == {}
    assert states["u1"].items == ("x", "y") and states["u1"].offset == 10 and states["u1"].topic == ""
    assert states["nobody"].partition is None


async def test_other_topic_compares_event_time(store: Store) -> None:
    assert (await store.write_lists([write(50, ts=2_000)])).applied == 1
    moved = ListWrite("u1", ("x",), (("a", 1.0),), "v1", 0, 3, 2_500, topic="clicks-v2")
    assert (await store.write_lists([moved])).applied == 1  # a low offset on a new topic is not "old"
    rec = await store.read_list("u1")
    assert rec is not None and rec["topic"] == "clicks-v2" and rec["offset"] == 3


async def test_other_partition_compares_event_time(store: Store) -> None:
    assert (await store.write_lists([write(50, partition=1, ts=2_000)])).applied == 1
    assert (await store.write_lists([write(3, partition=0, ts=1_500)])).applied == 0  # older event, new partition
    assert (await store.write_lists([write(4, partition=0, ts=2_500)])).applied == 1
    rec = await store.read_list("u1")
    assert rec is not None and rec["partition"] == 0


async def test_lists_carry_a_ttl(store: Store) -> None:
    await store.write_lists([write(1)])
    ttl = await store._r.ttl(rec_key("u1"))
    assert 0 < ttl <= 3600


async def test_quality_counters_accumulate_per_version(store: Store) -> None:
    await store.write_lists([write(1)], {"v1": (3, 1)})
    await store.write_lists([], {"v1": (2, 1), "v2": (4, 0)})
    q = await store.read_quality()
    assert q["v1"] == {"events": 5, "hits": 2, "hit_rate": 0.4}
    assert q["v2"]["hit_rate"] == 0.0
    states, bad = await store.read_states(["u1"])
    assert bad == {}
    assert states["u1"].shown == ("a",) and states["u1"].shown_version == "v1"


async def test_live_tables_read_back_as_seeded(store: Store) -> None:
    tables = Tables(store, max_age_s=0)
    await tables.load()
    assert await tables.neighbours_for(["I000", "missing"]) == {"I000": NEIGHBOURS["I000"], "missing": []}
    assert await tables.trending() == TRENDING
    counts = await tables.counts_for(["I000", "missing"])
    now = int(time.time() * 1000)
    assert counts["I000"].stats_at(now) == ITEM_STATS["I000"]
    assert counts["missing"].counts.baskets == 0


async def test_unusable_user_state_is_reported_per_user(store: Store) -> None:
    """A stray tool's keys isolate their user; everyone else in the same round trip is served."""
    r = store.client
    assert (await store.write_lists([write(5)])).applied == 1  # u1: healthy
    await r.set("hist:{p0}", "garbage")  # wrong type for the hash
    await r.hset("hist:{p1}", mapping={"items": "a", "p": "no-partition", "o": "x"})  # fields that do not parse
    await r.hset("hist:{p2}", mapping={"items": "a", "p": ":0", "o": "1", "ts": "1"})
    await r.set("rec:{p2}", "{not json")
    await r.lpush("rec:{p3}", "x")  # wrong type for the list
    states, bad = await store.read_states(["u1", "p0", "p1", "p2", "p3", "nobody"])
    assert set(bad) == {"p0", "p1", "p2", "p3"}
    assert bad["p0"].startswith("hist:{p0}: WRONGTYPE")
    assert bad["p1"].startswith("hist:{p1}:")
    assert bad["p2"].startswith("rec:{p2}:")
    assert bad["p3"].startswith("rec:{p3}: WRONGTYPE")
    assert states["u1"].offset == 5 and states["nobody"].partition is None

    # The write script refuses the same keys for those users only; the others are written.
    await r.hset("hist:{p5}", mapping={"p": ":0", "o": "not-a-number"})
    writes = [
        write(6),
        ListWrite("p0", ("x",), (("a", 1.0),), "v1", 0, 1, 1_000),
        ListWrite("p5", ("x",), (), "v1", 0, 9, 1),
    ]
    written = await store.write_lists(writes, {"v1": (1, 0)})
    assert written.applied == 1 and set(written.bad) == {"p0", "p5"}
    assert "hist:{p0}" in written.bad["p0"]
    assert (await store.read_list("u1"))["offset"] == 6  # type: ignore[index]
    assert await r.get("hist:{p0}") == "garbage"  # left for an operator to look at, not overwritten


async def test_stray_tables_degrade_and_do_not_stop(store: Store) -> None:
    """A share key of the wrong type reads as empty, an unparsable value as missing: served, logged."""
    r = store.client
    meta, _, counts, _, nb, _ = share_keys("clicks", 0)
    await r.delete(nb)
    await r.set(nb, "garbage")
    await r.hset(counts, "I000", "{broken")
    await r.hset(meta, "trend", "not;a:trend:x")
    tables = Tables(store, max_age_s=0)
    await tables.load()
    assert await tables.neighbours_for(["I000", "I001"]) == {"I000": [], "I001": []}
    got = await tables.counts_for(["I000", "I001"])
    assert got["I000"].counts.baskets == 0 and got["I001"].counts.baskets == ITEM_STATS["I001"].baskets
    assert await tables.trending() == []


async def test_crash_loop_guard_counts_owners_and_isolates_suspect_ranges(store: Store) -> None:
    def guard(owner: str) -> Guard:
        return Guard(store.client, "grp", owner, limit=3)

    # A first batch: nothing suspect.
    assert await guard("a").attempts({"t:0": (0, 49), "t:1": (10, 19)}) == {
        "t:0": Attempt(1, False),
        "t:1": Attempt(1, False),
    }
    # The same owner retrying its own batch (Redis was away) counts nothing.
    assert (await guard("a").attempts({"t:0": (0, 49)}))["t:0"] == Attempt(1, False)
    # Owner a never got further: b takes its range one record at a time.
    assert (await guard("b").attempts({"t:0": (0, 49)}))["t:0"] == Attempt(2, True)
    assert (await guard("b").attempts({"t:0": (1, 49)}))["t:0"] == Attempt(1, True)
    # b stops at offset 7 twice in a row with c and d: the starts add up.
    await guard("b").attempts({"t:0": (7, 49)})
    assert (await guard("c").attempts({"t:0": (7, 49)}))["t:0"] == Attempt(2, True)
    assert (await guard("d").attempts({"t:0": (7, 49)}))["t:0"] == Attempt(3, True)
    # Past the suspect range batches are whole again.
    assert (await guard("d").attempts({"t:0": (50, 90)}))["t:0"] == Attempt(1, False)
    # A partition that changed owner cleanly (committed up to where the next owner starts) is not suspect.
    assert (await guard("e").attempts({"t:1": (20, 29)}))["t:1"] == Attempt(1, False)
    # Garbage under the guard's key resets it rather than stopping the batch.
    await store.client.delete(guard_key("grp"))
    await store.client.set(guard_key("grp"), "garbage")
    assert (await guard("e").attempts({"t:1": (30, 39)}))["t:1"] == Attempt(1, False)
