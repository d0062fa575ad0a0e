"""Ranking instances: history order, positives, candidates, skipping and sampling."""

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.data.instances import (
    OPEN_MARK,
    Instance,
    build_instances,
    candidate_recall,
    eligible_baskets,
    is_open,
)
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


def test_open_baskets_hold_the_lines_so_far_and_the_rest_of_the_basket() -> None:
    test = split_frame(DATA, SPLIT)[2]
    plain, n = eligible_baskets(DATA, test)
    with_open, n_open = eligible_baskets(DATA, test, open_baskets=5)
    assert n == n_open and [e for e in with_open if OPEN_MARK not in e[2]] == plain
    # Keys are user \x1f basket, and OPEN_MARK k for an open state (written here as @k).
    opened = {e[2].split("\x1f")[1].replace(OPEN_MARK, "@"): e for e in with_open if OPEN_MARK in e[2]}
    # u2 has no history before basket 7, so only its open state is an instance: A on screen, B to come.
    assert opened["7@1"][1:] == ("u2", f"u2\x1f7{OPEN_MARK}1", ("A",), frozenset({"B"}))
    # u1's A (bought before) moves to the front once its line is written; D is still to come.
    assert opened["5@1"][3:] == (("A", "E", "B", "C"), frozenset({"D"}))
    assert opened["5@1"][0] == next(e for e in plain if e[2].endswith("\x1f5"))[0]  # the basket's own time
    assert set(opened) == {"7@1", "5@1", "10@1"}  # one-item basket 8 has no open state


def test_an_open_state_judged_by_its_next_line() -> None:
    df = _rows(("u1", "1", 40, "AB"), ("u1", "2", 62, "CADE"))
    test = split_frame(df, SPLIT)[2]
    rest, _ = eligible_baskets(df, test, open_baskets=3)
    nxt, _ = eligible_baskets(df, test, open_baskets=3, open_target="next")
    by_k = {e[2].split(OPEN_MARK)[1]: e[3:] for e in nxt if OPEN_MARK in e[2]}
    # After C, the next line is A, bought before: no state. After C, A the next line is D; after C, A, D, E.
    assert by_k == {"2": (("A", "C", "B"), frozenset({"D"})), "3": (("D", "A", "C", "B"), frozenset({"E"}))}
    assert {e[2].split(OPEN_MARK)[1]: e[4] for e in rest if OPEN_MARK in e[2]} == {
        "1": frozenset({"D", "E"}),
        "2": frozenset({"D", "E"}),
        "3": frozenset({"E"}),
    }
    assert [e for e in nxt if OPEN_MARK not in e[2]] == [e for e in rest if OPEN_MARK not in e[2]]
    with pytest.raises(ValueError, match="open_target must be one of"):
        eligible_baskets(df, test, open_baskets=3, open_target="all")  # type: ignore[arg-type]


@given(
    baskets=st.lists(
        st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 90), st.text("ABCDEFG", min_size=1, max_size=6)),
        min_size=1,
        max_size=12,
    ),
    open_baskets=st.integers(0, 4),
    seed=st.integers(0, 3),
    next_line=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_open_baskets_property(
    baskets: list[tuple[str, int, str]], open_baskets: int, seed: int, next_line: bool
) -> None:
    df = _rows(*[(u, str(k), day, items) for k, (u, day, items) in enumerate(baskets)])
    test = split_frame(df, SPLIT)[2]
    plain, _ = eligible_baskets(df, test)
    target = "next" if next_line else "rest"
    with_open, _ = eligible_baskets(df, test, open_baskets=open_baskets, seed=seed, open_target=target)
    assert [e for e in with_open if OPEN_MARK not in e[2]] == plain
    assert with_open == eligible_baskets(df, test, open_baskets=open_baskets, seed=seed, open_target=target)[0]
    # The same states are drawn either way; "next" keeps those whose next line is new, with that line alone.
    rest = {e[2]: e for e in eligible_baskets(df, test, open_baskets=open_baskets, seed=seed)[0]}
    per_basket: dict[str, int] = {}
    for _t, user, key, history, positives in with_open:
        if OPEN_MARK not in key:
            continue
        basket, k = key.split("\x1f")[1].split(OPEN_MARK)
        lines = list(dict.fromkeys(df.loc[df["basket"] == basket, "item_id"]))
        k = int(k)
        assert 1 <= k < len(lines) and user == df.loc[df["basket"] == basket, "user_id"].iloc[0]
        assert history[:k] == tuple(reversed(lines[:k]))  # the lines so far are the newest history
        assert positives and positives <= set(lines[k:]) and not positives & set(history)
        assert len(history) == len(set(history))
        assert key in rest and rest[key][3] == history and positives <= rest[key][4]
        if next_line:
            assert positives == {lines[k]}
        else:
            assert positives == rest[key][4]
        per_basket[basket] = per_basket.get(basket, 0) + 1
    assert all(n <= open_baskets for n in per_basket.values())
    # Every drawn state whose next line is new is kept: none is lost to the narrower target.
    assert {k for k, e in rest.items() if OPEN_MARK in k and (not next_line or _next_is_new(df, e))} == {
        e[2] for e in with_open if OPEN_MARK in e[2]
    }


def _next_is_new(df: pd.DataFrame, state: tuple) -> bool:
    """Whether an open state's next line is an item its user had not bought before it."""
    basket, k = state[2].split("\x1f")[1].split(OPEN_MARK)
    lines = list(dict.fromkeys(df.loc[df["basket"] == basket, "item_id"]))
    return lines[int(k)] not in state[3]


def test_is_open_tells_open_states_even_when_ids_hold_the_mark() -> None:
    df = _rows(("u1", "1", 62, "AB"), ("u1", f"2{OPEN_MARK}1", 63, "CD"))
    test = split_frame(df, SPLIT)[2]
    eligible, _ = eligible_baskets(df, test, open_baskets=3)
    assert [(e[2].split("\x1f")[1], opened) for e, opened in zip(eligible, is_open(eligible, test), strict=True)] == [
        (f"1{OPEN_MARK}1", True),
        (f"2{OPEN_MARK}1", False),  # the data set's own basket id
        (f"2{OPEN_MARK}1{OPEN_MARK}1", True),
    ]
