"""The Redis write fence on the real server: a list never goes backwards."""

import pytest

from rankstream.stream.signals import ItemStats
from rankstream.stream.store import ListWrite, Store, rec_key

from .conftest import CATALOG, ITEM_STATS, NEIGHBOURS, TRENDING

pytestmark = pytest.mark.integration


def write(offset: int, partition: int = 0, ts: int = 1_000, items=(("a", 1.0),)) -> ListWrite:  # type: ignore[no-untyped-def]
    return ListWrite("u1", ("x", "y"), tuple(items), "v1", partition, offset, ts)


async def test_newer_offset_wins_and_older_is_skipped(store: Store) -> None:
    assert await store.write_lists([write(10, items=(("new", 2.0),))]) == 1
    assert await store.write_lists([write(9, items=(("old", 1.0),))]) == 0
    assert await store.write_lists([write(10, items=(("same", 1.0),))]) == 0  # a replay of the same event
    rec = await store.read_list("u1")
    assert rec is not None
    assert [i["item_id"] for i in rec["items"]] == ["new"]
    assert rec["offset"] == 10 and rec["partition"] == 0 and rec["model_version"] == "v1"
    states = await store.read_states(["u1", "nobody"])
    assert states["u1"].items == ("x", "y") and states["u1"].offset == 10 and states["u1"].topic == ""
    assert states["nobody"].partition is None


async def test_other_topic_compares_event_time(store: Store) -> None:
    assert await store.write_lists([write(50, ts=2_000)]) == 1
    moved = ListWrite("u1", ("x",), (("a", 1.0),), "v1", 0, 3, 2_500, topic="clicks-v2")
    assert await store.write_lists([moved]) == 1  # a low offset on a new topic is not "old"
    rec = await store.read_list("u1")
    assert rec is not None and rec["topic"] == "clicks-v2" and rec["offset"] == 3


async def test_other_partition_compares_event_time(store: Store) -> None:
    assert await store.write_lists([write(50, partition=1, ts=2_000)]) == 1
    assert await store.write_lists([write(3, partition=0, ts=1_500)]) == 0  # older event, new partition
    assert await store.write_lists([write(4, partition=0, ts=2_500)]) == 1
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
    states = await store.read_states(["u1"])
    assert states["u1"].shown == ("a",) and states["u1"].shown_version == "v1"


async def test_item_stats_are_loaded_and_replaced_with_the_tables(store: Store) -> None:
    assert await store.read_item_stats() == ITEM_STATS
    await store.load_tables(CATALOG, NEIGHBOURS, TRENDING, {"I000": ItemStats(baskets=1)})
    assert await store.read_item_stats() == {"I000": ItemStats(baskets=1)}
    await store.load_tables(CATALOG, NEIGHBOURS, TRENDING)  # tables without statistics leave none behind
    assert await store.read_item_stats() == {}
