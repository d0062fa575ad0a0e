"""Offline ranking metrics over candidate lists. A ranker only reorders candidates, so the relevant
set of an instance is its positives that appear in its candidate list; instances with none are
reported as coverage and left out of the averages (they are equal for every model)."""

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass


def ndcg_at(ranked: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, it in enumerate(ranked[:k]) if it in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    return sum(1 for it in ranked[:k] if it in relevant) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    for i, it in enumerate(ranked):
        if it in relevant:
            return 1.0 / (i + 1)
    return 0.0


@dataclass
class MetricSums:
    """Running averages of NDCG@k, Recall@k and MRR over instances."""

    k: int = 10
    n: int = 0
    ndcg: float = 0.0
    recall: float = 0.0
    mrr: float = 0.0

    def add(self, ranked: Sequence[str], relevant: Collection[str]) -> None:
        self.n += 1
        self.ndcg += ndcg_at(ranked, relevant, self.k)
        self.recall += recall_at(ranked, relevant, self.k)
        self.mrr += reciprocal_rank(ranked, relevant)

    def means(self) -> dict[str, float]:
        d = max(self.n, 1)
        return {
            f"ndcg@{self.k}": self.ndcg / d,
            f"recall@{self.k}": self.recall / d,
            "mrr": self.mrr / d,
            "instances": float(self.n),
        }
