import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.stream.catalogstore import pack, stream_id, unpack
from rankstream.stream.textindex import TextIndex


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def index_of(vectors: dict[str, np.ndarray]) -> TextIndex:
    index = TextIndex(next(iter(vectors.values())).size)
    for item, vec in vectors.items():
        index.put(item, vec)
    return index


def test_nearest_is_max_cosine_over_the_queries_best_first() -> None:
    index = index_of({"a": unit(1, 0, 0), "b": unit(0, 1, 0), "c": unit(1, 1, 0), "d": unit(0, 0, 1)})
    assert index.nearest(unit(1, 0.1, 0), 2) == ["a", "c"]
    # Two queries: each item scores by the query it is closest to.
    assert index.nearest(np.stack([unit(1, 0, 0), unit(0, 0, 1)]), 2) == ["a", "d"]
    assert index.nearest(unit(1, 0, 0), 10, exclude={"a", "nope"}) == ["c", "b", "d"]
    assert index.nearest(unit(1, 0, 0), 0) == []
    assert TextIndex(3).nearest(unit(1, 0, 0), 5) == []


def test_ties_go_in_row_order() -> None:
    index = index_of({"x": unit(1, 0), "y": unit(1, 0), "z": unit(1, 0)})
    assert index.nearest(unit(1, 0), 2) == ["x", "y"]


def test_put_replaces_in_place_and_remove_moves_the_last_row() -> None:
    index = index_of({"a": unit(1, 0), "b": unit(0, 1), "c": unit(1, 1)})
    index.put("a", unit(0, 1))
    assert index.ids == ("a", "b", "c")
    np.testing.assert_allclose(index.vector("a"), unit(0, 1))
    assert index.remove("a") and not index.remove("a")
    assert index.ids == ("c", "b") and "a" not in index and len(index) == 2
    assert index.nearest(unit(1, 0), 5) == ["c", "b"]
    with pytest.raises(ValueError, match="dimensions"):
        index.put("d", unit(1, 0, 0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans(), st.integers(0, 3)), max_size=40))
def test_any_sequence_of_changes_answers_as_a_fresh_index(ops: list[tuple[str, bool, int]]) -> None:
    rng = np.random.default_rng(0)
    basis = [unit(*rng.normal(size=8)) for _ in range(4)]
    index = TextIndex(8)
    want: dict[str, np.ndarray] = {}
    for item, put, k in ops:
        if put:
            index.put(item, basis[k])
            want[item] = basis[k]
        else:
            index.remove(item)
            want.pop(item, None)
    assert set(index.ids) == set(want)
    query = unit(*rng.normal(size=8))
    got = index.nearest(query, 3)
    scores = {it: float(v @ query) for it, v in want.items()}
    assert [scores[it] for it in got] == sorted((scores[it] for it in got), reverse=True)
    assert len(got) == min(3, len(want))
    if want:
        assert max(scores.values()) == pytest.approx(scores[got[0]])


def test_vectors_are_stored_as_little_endian_float32() -> None:
    vec = unit(3, 4)
    raw = pack(vec)
    assert raw == np.asarray([0.6, 0.8], dtype="<f4").tobytes()
    np.testing.assert_array_equal(unpack(raw, 2), vec)
    with pytest.raises(ValueError, match="not 8"):
        unpack(raw + b"\0", 2)
    with pytest.raises(ValueError, match="finite"):
        unpack(np.asarray([np.nan, 1], dtype="<f4").tobytes(), 2)


def test_stream_ids_compare_as_numbers() -> None:
    assert stream_id("10-0") > stream_id("9-5") and stream_id("5") == (5, 0)


@settings(max_examples=50)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_similarity_is_the_score_nearest_ranks_by(n: int, queries: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, 4)).astype(np.float32)
    vectors = {f"i{k}": m[k] / np.linalg.norm(m[k]) for k in range(n)}
    index = index_of(vectors)
    q = rng.normal(size=(queries, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = index.similarity(q, [*vectors, "not-indexed"])
    assert set(sims) == set(vectors)
    for item, vec in vectors.items():
        assert sims[item] == pytest.approx(float((q @ vec).max()), abs=1e-5)
    ranked = index.nearest(q, n)
    assert [sims[i] for i in ranked] == sorted(sims.values(), reverse=True)
    assert index.similarity(q, []) == {} and index.similarity(q[:0], ["i0"]) == {}
