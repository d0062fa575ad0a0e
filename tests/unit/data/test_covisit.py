"""Co-visitation weights, order, truncation and determinism; trending."""

import pandas as pd

from rankstream.data.covisit import covisitation, trending

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-01-01T10:00:00Z")


def _rows(*baskets: tuple[str, str, float, str]) -> pd.DataFrame:
    """(user, basket, day offset, items as one string of single-letter ids)."""
    rows = [
        {"user_id": u, "item_id": item, "ts": T0 + day * DAY, "basket": b}
        for u, b, day, items in baskets
        for item in items
    ]
    return pd.DataFrame(rows)


def test_same_basket_counts_one_next_basket_half_both_ways() -> None:
    df = _rows(
        ("u1", "1", 0, "AB"),
        ("u1", "2", 1, "C"),  # next basket within 7 days: A-C and B-C weigh 0.5
        ("u2", "3", 0, "AD"),
        ("u2", "4", 20, "AD"),  # too late to be a next basket; A-D weighs 2 from the two baskets
    )
    nb = covisitation(df)
    assert nb["A"] == ["D", "B", "C"]  # 2.0, 1.0, 0.5
    assert nb["C"] == ["A", "B"]  # 0.5 each: A is in 3 baskets, B in 1
    assert nb["B"] == ["A", "C"]
    assert nb["D"] == ["A"]
    # Symmetric: every neighbour relation holds in both directions.
    for item, neighbours in nb.items():
        for other in neighbours:
            assert item in nb[other]


def test_only_the_immediate_next_basket_within_the_window() -> None:
    df = _rows(
        ("u", "1", 0, "E"),
        ("u", "2", 1, "F"),
        ("u", "3", 2, "G"),  # E-G is two baskets apart: no pair
        ("u", "4", 9, "H"),  # exactly 7 days after G: counts
        ("u", "5", 16.5, "I"),  # 7.5 days after H: does not
    )
    nb = covisitation(df)
    assert nb["E"] == ["F"]
    assert nb["F"] == ["E", "G"]
    assert nb["G"] == ["F", "H"]
    assert nb["H"] == ["G"]
    assert "I" not in nb


def test_top_k_and_ties_by_popularity_then_id() -> None:
    df = _rows(
        ("u1", "1", 0, "AZYX"),
        ("u2", "2", 30, "Y"),  # Y more popular than X and Z
    )
    nb = covisitation(df, k=2)
    assert nb["A"] == ["Y", "X"]  # all weigh 1.0: Y by popularity, then X before Z by id
    assert all(len(v) <= 2 for v in nb.values())


def test_repeats_in_a_basket_count_once_and_row_order_does_not_matter() -> None:
    df = _rows(("u1", "1", 0, "ABBA"), ("u1", "2", 3, "CAD"), ("u2", "3", 0, "BCD"), ("u3", "4", 1, "AC"))
    nb = covisitation(df)
    shuffled = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert covisitation(shuffled) == nb
    # A-B: one shared basket (the repeats add nothing) + next-basket u1 (0.5) = 1.5; A-C: 1 + 0.5 + 1 = 2.5
    assert nb["A"][:2] == ["C", "B"]


def test_without_basket_column_a_basket_is_user_and_ts() -> None:
    df = _rows(("u1", "x", 0, "AB"), ("u1", "y", 0, "C")).drop(columns="basket")
    assert covisitation(df)["A"] == ["B", "C"]  # one basket of three items
    assert covisitation(df.iloc[:0]) == {}


def test_trending_counts_the_last_days_only() -> None:
    df = _rows(
        ("u1", "1", 0, "OOO"),  # old: outside the 30-day window
        ("u2", "2", 0, "O"),
        ("u1", "3", 40, "AB"),
        ("u2", "4", 45, "B"),
        ("u3", "5", 50, "CAA"),
    )
    # A and B both in 2 recent baskets; B is no more popular overall, so id decides; O is too old.
    assert trending(df, days=30, n=10) == ["A", "B", "C"]
    assert trending(df, days=30, n=1) == ["A"]
    assert trending(df, days=60, n=2) == ["A", "B"]  # O is in 2 baskets too, but A and B ids sort first
    assert trending(df.iloc[:0]) == []
