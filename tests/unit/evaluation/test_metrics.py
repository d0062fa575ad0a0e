import math

import pytest

from rankstream.evaluation.metrics import MetricSums, ndcg_at, recall_at, reciprocal_rank


def test_perfect_and_empty_rankings() -> None:
    assert ndcg_at(["a", "b", "c"], {"a", "b"}) == pytest.approx(1.0)
    assert ndcg_at(["x", "y"], {"a"}) == 0.0
    assert recall_at(["x"], set()) == 0.0


def test_ndcg_discounts_by_position() -> None:
    assert ndcg_at(["x", "a"], {"a"}) == pytest.approx(1 / math.log2(3))


def test_recall_and_mrr() -> None:
    assert recall_at(["a", "x", "b"], {"a", "b", "c"}, k=2) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)


def test_sums_average_over_instances() -> None:
    s = MetricSums(k=10)
    s.add(["a"], {"a"})
    s.add(["x"], {"a"})
    assert s.means()["ndcg@10"] == pytest.approx(0.5)
    assert s.means()["instances"] == 2
