"""Ranking instances: history order, positives, candidates, skipping and sampling."""

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pandas as pd
import pytest

from rankstream.data.instances import Instance, build_instances, candidate_recall
from rankstream.data.split import Split, split_frame
from rankstream.stream.candidates import covisit_candidates

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-01-01T10:00:00Z")
SPLIT = Split("2024-02-01", "2024-03-01")  # train: January, valid: February, test: March on

NEIGHBOURS = {"A": ["D", "B", "X"], "C": ["E", "Y"], "B": ["A", "Z"]}
TRENDING = ["T1", "A", "T2", "T3"]


def _rows(*baskets: tuple[str, str, float, str]) -> pd.DataFrame:
    """(user, basket, day offset from 2024-01-01, items as one string of single-letter ids)."""
    return pd.DataFrame(
        [
            {"user_id": u, "item_id": item, "ts": T0 + day * DAY, "basket": b}
            for u, b, day, items in baskets
            for item in items
        ]
    )


DATA = _rows(
    ("u1", "1", 0, "AB"),
    ("u1", "2", 5, "C"),
    ("u1", "3", 10, "A"),  # a repeat moves A to the front of the history
    ("u1", "4", 35, "BE"),  # valid: history from train
    ("u1", "5", 65, "AD"),  # test: history from train and valid
    ("u1", "6", 66, "C"),  # test, nothing new: skipped
    ("u2", "7", 61, "AB"),  # test, first basket: no history, skipped
    ("u2", "8", 62, "Y"),
    ("u3", "9", 3, "C"),
    ("u3", "10", 62, "CE"),  # test, same day as u2's second basket
)


def test_history_newest_first_deduplicated_across_splits() -> None:
    _, valid, test = split_frame(DATA, SPLIT)
    (v,) = build_instances(DATA, valid, NEIGHBOURS, TRENDING)
    assert v.user_id == "u1"
    assert v.history == ("A", "C", "B")  # A bought again on day 10, C on day 5, B on day 0
    assert v.positives == frozenset({"E"})  # B is in the history, so not a positive
    assert v.ts == datetime(2024, 2, 5, 10, tzinfo=UTC)

    instances = build_instances(DATA, test, NEIGHBOURS, TRENDING)
    by_user = {x.user_id: x for x in instances}
    assert by_user["u1"].history == ("E", "B", "A", "C")  # the valid basket counts as history in test
    assert by_user["u1"].positives == frozenset({"D"})


def test_skips_baskets_without_history_or_new_items_and_keeps_time_order() -> None:
    test = split_frame(DATA, SPLIT)[2]
    instances = build_instances(DATA, test, NEIGHBOURS, TRENDING)
    assert [(x.user_id, x.ts.day) for x in instances] == [("u2", 3), ("u3", 3), ("u1", 6)]
    u2 = instances[0]
    assert u2.history == ("B", "A") and u2.positives == frozenset({"Y"})
    assert instances[1].positives == frozenset({"E"})  # C was bought before


def test_candidates_are_the_served_ones_and_never_in_history() -> None:
    test = split_frame(DATA, SPLIT)[2]
    for inst in build_instances(DATA, test, NEIGHBOURS, TRENDING, n_candidates=4):
        assert list(inst.candidates) == covisit_candidates(inst.history, NEIGHBOURS, TRENDING, 4)
        assert not set(inst.candidates) & set(inst.history)
        assert len(inst.candidates) <= 4
    u1 = next(x for x in build_instances(DATA, test, NEIGHBOURS, TRENDING, n_candidates=4) if x.user_id == "u1")
    # History (E, B, A, C): D = 1/(3*1), Z = 1/(2*2), Y = 1/(4*2), X = 1/(3*3); A, B, E are history.
    assert u1.candidates == ("D", "Z", "Y", "X")


def test_sampling_is_seeded_a_subset_and_in_time_order() -> None:
    users = [(f"u{n}", f"{n}a", n % 20, "AB") for n in range(60)]
    later = [(f"u{n}", f"{n}b", 40 + n % 15, "CD") for n in range(60)]
    df = _rows(*users, *later)
    valid = split_frame(df, SPLIT)[1]
    full = build_instances(df, valid, NEIGHBOURS, TRENDING)
    assert len(full) == 60
    one = build_instances(df, valid, NEIGHBOURS, TRENDING, max_instances=10, seed=3)
    again = build_instances(df, valid, NEIGHBOURS, TRENDING, max_instances=10, seed=3)
    other = build_instances(df, valid, NEIGHBOURS, TRENDING, max_instances=10, seed=4)
    assert one == again and one != other
    assert len(one) == 10 and set(one) <= set(full)
    assert [x.ts for x in one] == sorted(x.ts for x in one)
    assert build_instances(df, valid, NEIGHBOURS, TRENDING, max_instances=100) == full


def test_baskets_without_basket_column_and_frozen_instances() -> None:
    df = DATA.drop(columns="basket")
    test = split_frame(df, SPLIT)[2]
    assert [x.user_id for x in build_instances(df, test, NEIGHBOURS, TRENDING)] == ["u2", "u3", "u1"]
    inst = build_instances(df, test, NEIGHBOURS, TRENDING)[0]
    with pytest.raises(FrozenInstanceError):
        inst.history = ()  # type: ignore[misc]
    assert build_instances(df, test.iloc[:0], NEIGHBOURS, TRENDING) == []


def test_candidate_recall() -> None:
    hit = Instance("u", datetime(2024, 1, 1, tzinfo=UTC), ("A",), ("B", "C"), frozenset({"C"}))
    miss = Instance("u", datetime(2024, 1, 2, tzinfo=UTC), ("A",), ("B",), frozenset({"D"}))
    assert candidate_recall([hit, miss]) == 0.5
    assert candidate_recall([]) == 0.0
