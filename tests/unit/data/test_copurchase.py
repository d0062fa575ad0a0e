"""Co-purchased title pairs: distinct titled items the co-visitation tables link, weighted, capped, seeded."""

import pandas as pd

from rankstream.data.copurchase import copurchase_pairs
from rankstream.data.covisit import covisit_weights

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-01-01T10:00:00Z")
CATALOG = {x: f"title {x}" for x in "ABCDEFGH"} | {"Z": "title A"}


def _rows(*baskets: tuple[str, str, float, str]) -> pd.DataFrame:
    """(user, basket, day offset, items as one string of single-letter ids)."""
    rows = [
        {"user_id": u, "item_id": item, "ts": T0 + day * DAY, "basket": b}
        for u, b, day, items in baskets
        for item in items
    ]
    return pd.DataFrame(rows)


TRAIN = _rows(
    ("u1", "1", 0, "ABC"),
    ("u1", "2", 2, "DX"),  # next basket within 7 days: A-D, B-D, C-D; X has no title
    ("u2", "3", 0, "AB"),
    ("u2", "4", 30, "EF"),  # too late to be a next basket
    ("u3", "5", 0, "AZ"),  # Z's title is A's: nothing to learn from the pair
    ("u4", "6", 0, "GG"),  # the same item twice is no pair
)


def test_pairs_are_distinct_titled_co_visited_items_each_once() -> None:
    pairs = copurchase_pairs(TRAIN, CATALOG, 100)
    found = {frozenset((p.a, p.b)) for p in pairs}
    assert len(found) == len(pairs)  # each unordered pair once
    assert found == {frozenset(x) for x in ("AB", "AC", "BC", "AD", "BD", "CD", "EF")}
    assert all(p.title_a == CATALOG[p.a] and p.title_b == CATALOG[p.b] for p in pairs)


def test_pairs_are_the_co_visitation_tables_pairs() -> None:
    w = covisit_weights(TRAIN)
    linked = {frozenset((w.item_ids[i], w.item_ids[j])) for i, j in zip(w.i, w.j, strict=True)}
    assert {frozenset((p.a, p.b)) for p in copurchase_pairs(TRAIN, CATALOG, 100)} <= linked


def test_the_same_seed_gives_the_same_pairs_in_the_same_order() -> None:
    one = copurchase_pairs(TRAIN, CATALOG, 100, seed=3)
    assert one == copurchase_pairs(TRAIN, CATALOG, 100, seed=3)
    orders = {tuple(copurchase_pairs(TRAIN, CATALOG, 100, seed=s)) for s in range(10)}
    assert len(orders) > 1
    assert copurchase_pairs(TRAIN, CATALOG, 3, seed=3) == one[:3]


def test_the_cap_limits_the_pairs_of_a_popular_item() -> None:
    # A is bought with each of B..H in its own basket: seven pairs of A.
    train = _rows(*((f"u{k}", str(k), 0, "A" + x) for k, x in enumerate("BCDEFGH")))
    assert len(copurchase_pairs(train, CATALOG, 100)) == 7
    capped = copurchase_pairs(train, CATALOG, 100, cap_per_item=3)
    assert len(capped) == 3 and all("A" in (p.a, p.b) for p in capped)


def test_heavier_pairs_come_first_more_often() -> None:
    # A-B in ten baskets, C-D in one: a weighted draw puts A-B first almost always.
    train = _rows(*((f"u{k}", str(k), 0, "AB") for k in range(10)), ("v", "x", 0, "CD"))
    firsts = [copurchase_pairs(train, CATALOG, 1, seed=s)[0] for s in range(50)]
    assert sum(p.a == "A" for p in firsts) >= 40
