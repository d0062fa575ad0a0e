"""A scorer's reads of the live tables on the real Redis: merged over shares, re-read when one share moves."""

import logging

import pytest

from rankstream.stream.live import LiveParams, dump_neighbours, merge_counts, merge_neighbours
from rankstream.stream.livestore import COUNTS, TOP, seed, share_keys
from rankstream.stream.store import Store
from rankstream.stream.tables import Tables
from tests.live_seed import share_from_lists

from .conftest import ITEM_STATS, TRENDING

pytestmark = pytest.mark.integration

TOPIC = "clicks-reads"


async def test_a_share_that_moves_is_read_again_and_merged_with_the_others(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Each read parses only the shares whose values changed; the merge must still be over all of them,
    as if every share were parsed anew, and a share's bad value leaves out that share only."""
    a = share_from_lists({"I000": ["I001", "I002", "I003"]}, TRENDING, ITEM_STATS)
    b = share_from_lists({"I000": ["I004", "I001"]}, TRENDING, ITEM_STATS)
    await seed(store.client, TOPIC, [a, b], LiveParams())
    tables = Tables(store, max_age_s=0)
    await tables.load()
    n = tables.params.neighbours

    def expected(*shares: dict[str, float]) -> list[str]:
        return merge_neighbours(list(shares), n)

    assert (await tables.neighbours_for(["I000"]))["I000"] == expected(a.neighbours["I000"], b.neighbours["I000"])
    counts = (await tables.counts_for(["I000"]))["I000"].counts
    assert counts == merge_counts([a.counts["I000"], b.counts["I000"]])

    # Share b moves: I002 becomes its heaviest neighbour of I000, heavy enough to lead the merge.
    moved = {"I002": 10.0, "I004": 2.0, "I001": 1.0}
    await store.client.hset(share_keys(TOPIC, 1)[TOP], "I000", dump_neighbours(moved))
    got = (await tables.neighbours_for(["I000"]))["I000"]
    assert got == expected(a.neighbours["I000"], moved)
    assert got[0] == "I002"

    # Share a's value turns unreadable: served from share b alone, and said so.
    await store.client.hset(share_keys(TOPIC, 0)[TOP], "I000", "no-separator")
    await store.client.hset(share_keys(TOPIC, 0)[COUNTS], "I000", "{broken")
    with caplog.at_level(logging.ERROR, logger="rankstream.stream.tables"):
        assert (await tables.neighbours_for(["I000"]))["I000"] == expected(moved)
        assert (await tables.counts_for(["I000"]))["I000"].counts == merge_counts([b.counts["I000"]])
    assert sum("I000 is unreadable in a share" in r.getMessage() for r in caplog.records) == 2

    # And back: a good value in share a joins the merge again.
    await store.client.hset(share_keys(TOPIC, 0)[TOP], "I000", dump_neighbours({"I003": 50.0}))
    assert (await tables.neighbours_for(["I000"]))["I000"] == expected({"I003": 50.0}, moved)
