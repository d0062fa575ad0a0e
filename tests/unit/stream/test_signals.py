"""Serve-time signals: the function the scorer, the evaluation and training share, and its tables."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.stream.signals import HISTORY_ITEMS, SIGNALS, ItemStats, candidate_signals, title_words

HISTORY = ["h1", "h2"]  # newest first
CANDIDATES = ["c1", "c2", "c3"]
NEIGHBOURS = {
    "h1": ["c1", "c2"],
    "h2": ["c2", "x"],
    "c1": ["h2", "z"],
    "c2": ["q", "h1", "h2"],
    "c3": [],
}
TITLES = {"h1": "Red Cake Stand", "h2": "Blue mug", "c1": "red MUG", "c2": "Cake tin", "c3": "a to"}
STATS = {"c1": ItemStats(baskets=10, baskets_7d=2, baskets_30d=5, buyers=7, age_days=100), "c3": ItemStats()}


def test_signals_of_a_small_case_match_hand_computed_values() -> None:
    got = candidate_signals(HISTORY, CANDIDATES, NEIGHBOURS, STATS, TITLES)
    assert got.dtype == np.float32 and got.shape == (3, len(SIGNALS.names))
    log = math.log
    expected = [
        # vote5: h1 (pos 0) lists c1 first: 1/(1*1).  rev: c1 lists h2 (pos 1) first: 1/(2*1); one hit.
        # words {red, mug} both in the history's {red, cake, stand, blue, mug}.
        [log(1 + 1e-3), log(0.5 + 1e-3), 1, 1.0, log(6 / 40 * 10), log(3), log(8), log(101)],
        # vote5: h1 rank 1 -> 1/(1*2), h2 rank 0 -> 1/(2*1).  rev: h1 at rank 1 -> 1/(1*2), h2 at rank 2
        # -> 1/(2*3).  words {cake, tin}: one of two.  No statistics: every count 0.
        [log(1 + 1e-3), log(0.5 + 1 / 6 + 1e-3), 2, 0.5, log(1 / 30 * 10), 0, 0, 0],
        # Nobody votes for c3, it lists nothing, its title has no word of 3+ letters.
        [log(1e-3), log(1e-3), 0, 0.0, log(1 / 30 * 10), 0, 0, 0],
    ]
    np.testing.assert_allclose(got, np.array(expected, dtype=np.float32), rtol=1e-6, atol=1e-6)


def test_signals_read_only_the_newest_history_items() -> None:
    old = [f"o{i}" for i in range(HISTORY_ITEMS)]
    # "far" is the 51st newest item: the candidate's neighbour list names it, but it is out of reach.
    history = [*old, "far"]
    nb = {"c": ["far", old[-1]]}
    row = candidate_signals(history, ["c"], nb, {}, {})[0]
    names = list(SIGNALS.names)
    assert row[names.index("nrev50")] == 1
    assert row[names.index("rev_log")] == pytest.approx(math.log(1 / (HISTORY_ITEMS * 2) + 1e-3), rel=1e-6)
    # Only the 5 newest vote: the same neighbour list on the 6th newest item gives no vote.
    votes = candidate_signals(["a", "b", "c2", "d", "e", "f"], ["x"], {"f": ["x"]}, {}, {})[0]
    assert votes[names.index("vote5_log")] == pytest.approx(math.log(1e-3))


def test_an_empty_candidate_list_gives_an_empty_matrix() -> None:
    assert candidate_signals(HISTORY, [], NEIGHBOURS, STATS, TITLES).shape == (0, len(SIGNALS.names))


def test_title_words_are_lower_case_letter_runs_of_three_or_more() -> None:
    assert title_words("Set of 3 CAKE tins, pantry-design") == {"set", "cake", "tins", "pantry", "design"}


def test_item_stats_round_trip_through_json() -> None:
    s = ItemStats(baskets=4, baskets_7d=1, baskets_30d=2, buyers=3, age_days=40)
    assert ItemStats.from_json(s.to_json()) == s


def test_signals_module_does_not_import_torch_or_pandas() -> None:
    code = (
        "import sys, rankstream.stream.signals; "
        "bad = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "ts": pd.to_datetime([t for _, _, t in rows], utc=True).astype("datetime64[us, UTC]"),
        }
    )


def test_item_stats_count_baskets_buyers_and_age_at_the_frames_end() -> None:
    from rankstream.data.itemstats import item_stats

    frame = _frame(
        [
            ("u1", "a", "2024-01-01T10:00:00Z"),
            ("u1", "a", "2024-01-01T10:00:00Z"),  # twice in one basket: one basket
            ("u2", "a", "2024-01-25T10:00:00Z"),
            ("u2", "b", "2024-01-25T10:00:00Z"),
            ("u1", "a", "2024-01-31T09:00:00Z"),
            ("u3", "c", "2024-01-31T10:00:00Z"),  # the frame's last event
        ]
    )
    stats = item_stats(frame)
    assert stats["a"] == ItemStats(baskets=3, baskets_7d=2, baskets_30d=2, buyers=2, age_days=30)
    assert stats["b"] == ItemStats(baskets=1, baskets_7d=1, baskets_30d=1, buyers=1, age_days=6)
    assert stats["c"] == ItemStats(baskets=1, baskets_7d=1, baskets_30d=1, buyers=1, age_days=0)


ITEMS = [f"i{k}" for k in range(12)]


@st.composite
def _user_and_tables(draw):  # type: ignore[no-untyped-def]
    """A history (any items, repeats allowed), candidates, and neighbour lists holding an item once each."""
    history = draw(st.lists(st.sampled_from(ITEMS), max_size=HISTORY_ITEMS + 5))
    candidates = draw(st.lists(st.sampled_from(ITEMS), max_size=8))
    lists = st.lists(st.sampled_from(ITEMS), unique=True, max_size=10)
    neighbours = draw(st.dictionaries(st.sampled_from(ITEMS), lists))
    return history, candidates, neighbours


@settings(max_examples=400, deadline=None)
@given(_user_and_tables())
def test_reverse_votes_are_a_walk_down_each_candidates_list(case) -> None:  # type: ignore[no-untyped-def]
    """rev and nrev50 as defined: every neighbour that is one of the 50 newest history items counts, with
    weight 1 / ((1 + its newest position) * (1 + its rank)), summed in rank order (the same float)."""
    history, candidates, neighbours = case
    got = candidate_signals(history, candidates, neighbours, {}, {})
    position: dict[str, int] = {}
    for pos, item in enumerate(history[:HISTORY_ITEMS]):
        position.setdefault(item, pos)
    names = list(SIGNALS.names)
    for k, cand in enumerate(candidates):
        rev, nrev = 0.0, 0
        for rank, nb in enumerate(neighbours.get(cand, [])):
            if nb in position:
                rev += 1.0 / ((1 + position[nb]) * (1 + rank))
                nrev += 1
        assert got[k, names.index("nrev50")] == nrev
        assert got[k, names.index("rev_log")] == np.float32(math.log(rev + 1e-3))
