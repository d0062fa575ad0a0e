"""The learned merge's parts (`stream.retrieval`): the pool, its features, the head and its file, which
comes from outside the scorer and so is thrown arbitrary and mutated input."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstream.stream.retrieval import (
    ABSENT_RANK,
    FEATURES,
    MERGE_FILE,
    MergeError,
    MergeHead,
    learned_merge,
    merge_features,
    pool,
)
from rankstream.stream.signals import SIGNALS

ids = st.lists(st.sampled_from([f"i{k}" for k in range(12)]), max_size=12)
F = len(FEATURES)


def head(weight: np.ndarray | None = None, **kw: object) -> MergeHead:
    w = np.zeros(F) if weight is None else weight
    fields = dict(
        version="m1",
        signal_set=SIGNALS.version,
        encoder="b1",
        pool_covisit=200,
        pool_text=50,
        mean=np.zeros(F),
        scale=np.ones(F),
        weight=w,
        bias=0.0,
    )
    fields.update(kw)
    return MergeHead(**fields)  # type: ignore[arg-type]


@given(ids, ids)
def test_the_pool_holds_each_item_once_covisitation_first(covisit: list[str], text: list[str]) -> None:
    p = pool(covisit, text)
    c, t = list(dict.fromkeys(covisit)), list(dict.fromkeys(text))
    assert p.items == c + [x for x in t if x not in c]
    for item, cr, tr in zip(p.items, p.covisit_rank, p.text_rank, strict=True):
        assert cr == (c.index(item) if item in c else -1)
        assert tr == (t.index(item) if item in t else -1)


def test_features_place_each_item_in_its_sources() -> None:
    p = pool(["a", "b"], ["b", "c"])
    signals = np.arange(3 * len(SIGNALS.names), dtype=np.float32).reshape(3, -1)
    x = merge_features(p, signals, {"a": 0.5, "c": 0.9})
    assert x.shape == (3, F)
    np.testing.assert_array_equal(x[:, : len(SIGNALS.names)], signals)
    place = {name: x[:, FEATURES.index(name)] for name in ("from_covisit", "covisit_rank_log", "cosine", "from_text")}
    np.testing.assert_array_equal(place["from_covisit"], [1, 1, 0])
    np.testing.assert_array_equal(place["from_text"], [0, 1, 1])
    np.testing.assert_allclose(place["covisit_rank_log"], np.log1p([0, 1, ABSENT_RANK]))
    np.testing.assert_allclose(place["cosine"], [0.5, 0.0, 0.9])  # b has no vector: 0
    with pytest.raises(ValueError, match="signal rows"):
        merge_features(p, signals[:2], {})


def test_the_head_picks_its_best_and_their_signal_rows() -> None:
    p = pool(["a", "b", "c"], ["d"])
    signals = np.zeros((4, len(SIGNALS.names)), dtype=np.float32)
    signals[:, 0] = [0.0, 3.0, 1.0, 2.0]  # the first signal: the only one the head weighs
    signals[:, 1] = [10, 11, 12, 13]
    w = np.zeros(F)
    w[0] = 1.0
    cands, rows = learned_merge(head(w), p, signals, {}, 3)
    assert cands == ["b", "d", "c"]
    np.testing.assert_array_equal(rows[:, 1], [11, 13, 12])
    # All equal: the pool's order.
    assert learned_merge(head(), p, signals, {}, 4)[0] == ["a", "b", "c", "d"]


def test_a_head_survives_its_file() -> None:
    h = head(np.linspace(-1, 1, F), bias=-2.5)
    back = MergeHead.parse(h.to_json(report={"anything": 1}))
    assert back.version == h.version and back.pool_covisit == 200 and back.pool_text == 50 and back.bias == -2.5
    for name in ("mean", "scale", "weight"):
        np.testing.assert_array_equal(getattr(back, name), getattr(h, name))


def test_read_refuses_another_signal_set_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="merge.json"):
        MergeHead.read(tmp_path)
    (tmp_path / MERGE_FILE).write_text(head(signal_set="covisit-pop-7-old").to_json())
    with pytest.raises(MergeError, match="covisit-pop-7-old"):
        MergeHead.read(tmp_path)
    (tmp_path / MERGE_FILE).write_text(head().to_json())
    assert MergeHead.read(tmp_path).signal_set == SIGNALS.version


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_are_a_head_or_a_merge_error(raw: bytes) -> None:
    try:
        MergeHead.parse(raw)
    except MergeError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(json.loads(head().to_json()))), json_values, st.booleans())
def test_a_mutated_file_is_refused_with_the_field_named(key: str, value: object, drop: bool) -> None:
    body = json.loads(head().to_json())
    original = body[key]
    if drop:
        del body[key]
    else:
        body[key] = value
    try:
        parsed = MergeHead.parse(json.dumps(body))
    except MergeError as exc:
        assert key in str(exc) or "features" in str(exc)
        return
    # Accepted: only a value of the right kind (a list of the right numbers, a string, a count) gets here.
    assert not drop and value is not None
    if key in ("mean", "scale", "weight"):
        assert np.isfinite(getattr(parsed, key)).all() and len(getattr(parsed, key)) == F
    elif key == "features":
        assert value == original
