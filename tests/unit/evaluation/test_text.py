"""Text neighbours, the merged order and the re-order by similarity, on vectors small enough to check by hand."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.evaluation.text import (
    COSINE,
    MERGED,
    TEXT,
    TUNED,
    ItemVectors,
    by_similarity,
    retrieval_recall,
    text_neighbours,
    text_orders,
)
from rankstream.stream.retrieval import interleave as merge


def unit(*rows: tuple[float, ...]) -> np.ndarray:
    m = np.asarray(rows, np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# a and b point one way, c and d another, e half way; f is a copy of b (a tie with it everywhere).
VECTORS = ItemVectors(
    ("a", "b", "c", "d", "e", "f"),
    unit((1, 0), (0.9, 0.1), (0, 1), (0.1, 0.9), (1, 1), (0.9, 0.1)),
)


def test_neighbours_are_the_most_similar_items_outside_the_history() -> None:
    # From a: b and f (equal, in row order), then e, then d, then c.
    assert text_neighbours(VECTORS, ["a"], 10) == ["b", "f", "e", "d", "c"]
    assert text_neighbours(VECTORS, ["a"], 2) == ["b", "f"]
    # Each item scores its best cosine to any recent item: b to a and d to c are the same angle, a tie
    # broken by row order.
    assert text_neighbours(VECTORS, ["a", "c"], 3) == ["b", "d", "f"]


def test_history_is_excluded_beyond_the_recent_items() -> None:
    # Only the newest item (recent=1) is a query, but nothing the user ever had is proposed.
    assert text_neighbours(VECTORS, ["a", "b", "c"], 10, recent=1) == ["f", "e", "d"]


def test_items_without_a_vector_are_left_out_and_fewer_than_n_come_back() -> None:
    assert text_neighbours(VECTORS, ["unknown", "c"], 10) == ["d", "e", "b", "f", "a"]
    assert text_neighbours(VECTORS, ["unknown"], 10) == []
    assert text_neighbours(VECTORS, ["a"], 0) == []
    assert text_neighbours(VECTORS, list("abcdef"), 10) == []


def test_by_similarity_reorders_and_puts_unknown_candidates_last() -> None:
    assert by_similarity(VECTORS, ["a"], ["c", "x", "f", "e", "b"]) == ["f", "b", "e", "c", "x"]
    # f and b tie: they keep their order in the list.
    assert by_similarity(VECTORS, ["a"], ["b", "f"]) == ["b", "f"]
    assert by_similarity(VECTORS, ["unknown"], ["c", "a"]) == ["c", "a"]


def test_the_interleave_keeps_the_head_then_takes_turns() -> None:
    live = [f"l{k}" for k in range(10)]
    text = [f"t{k}" for k in range(10)]
    assert merge(live, text, 8, head=3) == ["l0", "l1", "l2", "t0", "l3", "t1", "l4", "t2"]
    # Shared items are taken once, where first met (a turn skips to its source's next new item); when one
    # source runs out the other fills the rest.
    assert merge(["a", "b", "c"], ["b", "x", "a", "y", "z", "w"], 10, head=1) == ["a", "b", "c", "x", "y", "z", "w"]
    assert merge([], ["x", "y"], 5) == ["x", "y"]
    assert merge(["a", "b"], [], 5, head=0) == ["a", "b"]
    assert merge(live, text, 5) == live[:5]  # n inside the head


@given(
    primary=st.lists(st.sampled_from("abcdefghij"), unique=True),
    secondary=st.lists(st.sampled_from("efghijklmn"), unique=True),
    n=st.integers(0, 25),
    head=st.integers(0, 12),
)
def test_the_interleave_takes_each_item_once_up_to_n_and_keeps_each_sources_order(
    primary: list[str], secondary: list[str], n: int, head: int
) -> None:
    out = merge(primary, secondary, n, head=head)
    assert len(out) == len(set(out)) == min(n, len(set(primary) | set(secondary)))
    assert out[: min(head, n, len(primary))] == primary[: min(head, n, len(primary))]
    for source, other in ((primary, secondary), (secondary, primary)):
        own = [i for i in out if i in source and i not in other]
        assert own == sorted(own, key=source.index)


@given(
    matrix=st.lists(
        st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=12
    ).filter(lambda rows: all(any(r) for r in rows)),
    history=st.lists(st.integers(0, 11), unique=True, max_size=8),
    n=st.integers(0, 15),
)
def test_neighbours_are_sorted_and_outside_the_history(
    matrix: list[tuple[int, int, int]], history: list[int], n: int
) -> None:
    vectors = ItemVectors(tuple(f"i{k}" for k in range(len(matrix))), unit(*matrix))
    hist = [f"i{k}" for k in history]
    out = text_neighbours(vectors, hist, n)
    assert not set(out) & set(hist) and len(out) == len(set(out)) <= n
    recent = vectors.rows(hist[:5])
    if not recent:
        assert out == []
        return
    sims = (vectors.matrix[recent] @ vectors.matrix.T).max(axis=0)
    got = [float(sims[vectors.row[i]]) for i in out]
    assert got == sorted(got, reverse=True)
    rest = [float(sims[k]) for k, i in enumerate(vectors.ids) if i not in out and i not in hist]
    assert len(out) == min(n, len(vectors.ids) - len(set(vectors.rows(hist))))
    if out and rest:
        assert min(got) >= max(rest)


def test_text_orders_keep_catalog_items_and_merge_with_the_live_order() -> None:
    catalog = {i: f"{i} thing" for i in "abcde"}  # f has a vector but no title: never served
    orders = text_orders(VECTORS, [["a"], ["c"]], [["c", "d"], ["a"]], catalog, 3)
    assert orders[TEXT] == [["b", "e"], ["d", "e", "b"]]  # the top 3 of a: b, f, e
    assert orders[MERGED] == [["c", "d", "b"], ["a", "d", "e"]]
    assert orders[COSINE] == [["d", "c"], ["a"]]


def test_tuned_vectors_name_their_orders_apart() -> None:
    catalog = {i: f"{i} thing" for i in "abcde"}
    orders = text_orders(VECTORS, [["a"]], [["c", "d"]], catalog, 3, TUNED)
    assert set(orders) == {"text-tuned", "merged-tuned", "covisit-live-cosine-tuned"}
    assert orders[TUNED.text] == text_orders(VECTORS, [["a"]], [["c", "d"]], catalog, 3)[TEXT]


def test_retrieval_recall_is_the_mean_share_of_positives_among_the_text_neighbours() -> None:
    catalog = {i: f"{i} thing" for i in "abcde"}
    # a's 2 neighbours with a title: b, e (f has none); c's: d, e.
    baskets = [(["a"], {"b", "c"}), (["c"], {"d"}), (["zz"], {"a"})]  # zz has no vector: nothing found
    assert retrieval_recall(VECTORS, baskets, catalog, n=3) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert np.isnan(retrieval_recall(VECTORS, [], catalog))


def test_vectors_and_ids_must_agree() -> None:
    with pytest.raises(ValueError, match="2 ids"):
        ItemVectors(("a", "b"), np.zeros((3, 2), np.float32))
