"""One held-out candidate set scored by many models: quality (NDCG@10, Recall@10, MRR) and speed.

Every model and both non-neural orders see the same lists, built once; quality scores one batch per
instance (as the scorer scores one batch per user), speed times fixed-size batches of pairs. Candidates
and their serve-time signals come from the live tables just before each basket
(`rankstream.data.live_instances`: the scorer's functions on the tables it would have read), and models
with a signal head read those signals.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankstream.data.instances import Instance
from rankstream.data.live_instances import Choose, live_instances
from rankstream.data.prepare import Prepared
from rankstream.evaluation.metrics import MetricSums
from rankstream.stream.candidates import in_catalog
from rankstream.stream.features import candidate_text, history_text

log = logging.getLogger(__name__)

N_CANDIDATES = 50
Pairs = Sequence[tuple[str, str]]
# Called as f(lists) for an EvalSet without signals, f(lists, signals) with them (Ranker.score_lists).
ScoreLists = Callable[..., Sequence[np.ndarray]]
ScoreBatch = Callable[..., np.ndarray]  # f(pairs) or f(pairs, signals) (Ranker.score)


@dataclass(frozen=True)
class EvalSet:
    """Rankable instances of one split: each with its candidate pairs, ids and relevant items."""

    split: str
    instances: int
    lists: tuple[tuple[tuple[str, str], ...], ...]
    candidates: tuple[tuple[str, ...], ...]
    relevant: tuple[frozenset[str], ...]
    popularity_order: tuple[tuple[str, ...], ...]
    signals: tuple[np.ndarray, ...] | None = None  # one [len(list), F] matrix per list

    @classmethod
    def build(
        cls, data_dir: Path, split: str, *, max_instances: int | None, seed: int = 0, choose: Choose | None = None
    ) -> "EvalSet":
        """The split's instances from the live tables (`choose`: a learned merge's candidates instead of
        co-visitation's)."""
        prepared = Prepared.load(data_dir)
        live = live_instances(
            prepared.interactions,
            prepared.frame(split),
            prepared.catalog,
            n_candidates=N_CANDIDATES,
            max_instances=max_instances,
            seed=seed,
            choose=choose,
        )
        popularity = prepared.frame("train")["item_id"].value_counts().to_dict()
        return cls.from_instances(split, live.instances, prepared.catalog, popularity, signals=live.signals)

    @classmethod
    def from_instances(
        cls,
        split: str,
        instances: Sequence[Instance],
        catalog: Mapping[str, str],
        popularity: Mapping[str, int],
        *,
        signals: Sequence[np.ndarray] | None = None,
    ) -> "EvalSet":
        """The rankable ones of `instances` (a positive among the candidates); `popularity`: item -> count.

        With `signals` (one `candidate_signals` matrix per instance, rows in `in_catalog` order, as
        `live_instances` gives them), every list also carries its rows.
        """
        if signals is not None and len(signals) != len(instances):
            raise ValueError(f"{len(signals)} signal matrices for {len(instances)} instances")
        lists, cands_all, relevant_all, pop = [], [], [], []
        kept: list[np.ndarray] | None = [] if signals is not None else None
        for k, inst in enumerate(instances):
            cands = in_catalog(inst.candidates, catalog)
            relevant = inst.positives.intersection(cands)
            if not relevant:
                continue
            query = history_text([catalog[i] for i in inst.history if i in catalog])
            lists.append(tuple((query, candidate_text(catalog[c], r)) for r, c in enumerate(cands)))
            cands_all.append(tuple(cands))
            relevant_all.append(frozenset(relevant))
            pop.append(tuple(sorted(cands, key=lambda c: -popularity.get(c, 0))))
            if kept is not None and signals is not None:
                kept.append(signals[k])
        return cls(
            split,
            len(instances),
            tuple(lists),
            tuple(cands_all),
            tuple(relevant_all),
            tuple(pop),
            None if kept is None else tuple(kept),
        )

    @property
    def n_pairs(self) -> int:
        return sum(len(x) for x in self.lists)

    def baselines(self) -> dict[str, dict[str, float]]:
        """The co-visitation (candidate) order and the train-popularity order."""
        cov, pop = MetricSums(), MetricSums()
        for cands, popular, rel in zip(self.candidates, self.popularity_order, self.relevant, strict=True):
            cov.add(cands, rel)
            pop.add(popular, rel)
        return {"covisit": cov.means(), "popularity": pop.means()}

    def quality(self, score_lists: ScoreLists) -> dict[str, float]:
        """NDCG@10, Recall@10, MRR of the order by score, plus the scoring rate of one batch per list."""
        sums = MetricSums()
        t0 = time.perf_counter()
        scores = score_lists(self.lists) if self.signals is None else score_lists(self.lists, self.signals)
        seconds = time.perf_counter() - t0
        for cands, rel, s in zip(self.candidates, self.relevant, scores, strict=True):
            order = np.argsort(-np.asarray(s), kind="stable")
            sums.add([cands[i] for i in order], rel)
        return sums.means() | {"per_list_pairs_per_s": self.n_pairs / seconds if seconds else 0.0}

    def speed_pairs(self, n: int) -> list[tuple[str, str]]:
        """The first `n` pairs over all lists, in order: a fixed mix of users and lengths."""
        flat = [p for lst in self.lists for p in lst]
        return flat[:n]

    def speed_signals(self, n: int) -> np.ndarray | None:
        """The signal rows of `speed_pairs(n)`, or None when the lists carry none."""
        if self.signals is None:
            return None
        rows = np.concatenate(self.signals) if self.signals else np.zeros((0, 0), np.float32)
        return rows[:n]


def throughput(
    score_batch: ScoreBatch,
    pairs: Pairs,
    *,
    signals: np.ndarray | None = None,
    batch_size: int = 32,
    warmup: int = 2,
) -> dict[str, float]:
    """pairs/s and p50/p99 batch latency (ms) over `pairs` in batches of `batch_size`, after a warmup.

    With `signals` (one row per pair), each batch is scored as `score_batch(pairs, signals)`.
    """
    starts = range(0, len(pairs), batch_size)
    batches = [
        (pairs[i : i + batch_size],) if signals is None else (pairs[i : i + batch_size], signals[i : i + batch_size])
        for i in starts
    ]
    for b in batches[:warmup]:
        score_batch(*b)
    latencies = []
    for b in batches:
        t0 = time.perf_counter()
        score_batch(*b)
        latencies.append(time.perf_counter() - t0)
    total = sum(latencies)
    ms = np.array(latencies) * 1000
    return {
        "pairs_per_s": len(pairs) / total if total else 0.0,
        "p50_batch_ms": float(np.percentile(ms, 50)),
        "p99_batch_ms": float(np.percentile(ms, 99)),
        "batches": float(len(batches)),
        "batch_size": float(batch_size),
    }
