"""The learned merge offline: every eligible basket's pool from the live tables just before it, its
features and positives; fitting the head on them; and the orders it makes for the end-to-end evaluation.

The pool, its signals and features come from the scorer's own functions (`stream.retrieval`,
`stream.signals`, `covisit_candidates` over a `LiveReplay` of the tables), and the text neighbours from
`rankstream.evaluation.text`, whose search is `TextIndex.nearest`'s: so a head is fitted and judged on
what a scorer would compute at that moment.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from rankstream.data.live_instances import PARTITIONS, Choose, live_candidates, live_instances, live_signals
from rankstream.data.live_replay import LiveReplay
from rankstream.evaluation.text import ItemVectors, similarity, text_neighbours
from rankstream.stream.candidates import in_catalog
from rankstream.stream.live import LiveParams
from rankstream.stream.retrieval import FEATURES, MergeHead, Pool, merge_features, pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PooledBasket:
    """One eligible basket as a learned merge sees it."""

    ts: datetime  # the basket's time
    history: tuple[str, ...]  # newest first
    positives: frozenset[str]
    pool: Pool
    signals: np.ndarray  # float32 [pool items, signals]: `candidate_signals` of the pool
    features: np.ndarray  # float64 [pool items, FEATURES]

    def labels(self) -> np.ndarray:
        return np.array([i in self.positives for i in self.pool.items], dtype=np.float64)


def pooled_at(
    replay: LiveReplay,
    history: Sequence[str],
    at_ms: int,
    catalog: Mapping[str, str],
    vectors: ItemVectors | None,
    pool_covisit: int,
    pool_text: int,
) -> tuple[Pool, np.ndarray, np.ndarray]:
    """A user's pool from the replay's current tables, its signal rows and its features, as a scorer
    computes them at `at_ms` (`stream.scoring`)."""
    covisit = in_catalog(live_candidates(replay, history, pool_covisit), catalog)
    text: list[str] = []
    cosine: dict[str, float] = {}
    if vectors is not None and pool_text:
        text = in_catalog(text_neighbours(vectors, history, pool_text), catalog)
    p = pool(covisit, text)
    if vectors is not None:
        sims = similarity(vectors, history)
        if sims is not None:
            cosine = {i: float(sims[vectors.row[i]]) for i in p.items if i in vectors.row}
    signals = live_signals(replay, history, p.items, catalog, at_ms)
    return p, signals, merge_features(p, signals, cosine)


def merge_chooser(head: MergeHead, vectors: ItemVectors | None, catalog: Mapping[str, str], n: int) -> Choose:
    """`live_instances`'s `choose` for a learned merge: the head's `n` picks from the pool and their rows,
    so training lists and gates see the candidates a scorer with that merge serves."""

    def choose(replay: LiveReplay, history: Sequence[str], at_ms: int) -> tuple[list[str], np.ndarray]:
        p, signals, features = pooled_at(replay, history, at_ms, catalog, vectors, head.pool_covisit, head.pool_text)
        chosen = head.select(features, n)
        return [p.items[k] for k in chosen], signals[chosen]

    return choose


def pooled_baskets(
    interactions_all: pd.DataFrame,
    frame: pd.DataFrame,
    catalog: Mapping[str, str],
    vectors: ItemVectors | None,
    pool_covisit: int,
    pool_text: int,
    *,
    params: LiveParams | None = None,
    partitions: int = PARTITIONS,
) -> list[PooledBasket]:
    """The eligible baskets of `frame`, in time order, each pooled from the live tables just before it:
    `live_instances`' walk, its `choose` keeping the whole pool instead of picking from it."""
    pools: list[tuple[Pool, np.ndarray]] = []

    def keep_all(replay: LiveReplay, history: Sequence[str], at_ms: int) -> tuple[list[str], np.ndarray]:
        p, signals, features = pooled_at(replay, history, at_ms, catalog, vectors, pool_covisit, pool_text)
        pools.append((p, features))
        return p.items, signals

    t0 = time.perf_counter()
    live = live_instances(interactions_all, frame, catalog, params=params, partitions=partitions, choose=keep_all)
    log.info("pooled %d baskets in %.0f s", len(pools), time.perf_counter() - t0)
    return [
        PooledBasket(inst.ts, tuple(inst.history), inst.positives, p, signals, features)
        for inst, signals, (p, features) in zip(live.instances, live.signals or [], pools, strict=True)
    ]


def merged_orders(head: MergeHead, baskets: Sequence[PooledBasket], n: int) -> list[tuple[list[str], np.ndarray]]:
    """Each basket's `n` candidates as the head picks them, best first, and their signal rows."""
    out = []
    for b in baskets:
        chosen = head.select(b.features, n)
        out.append(([b.pool.items[i] for i in chosen], b.signals[chosen]))
    return out


def fit_head(
    baskets: Sequence[PooledBasket],
    *,
    version: str,
    signal_set: str,
    encoder: str,
    pool_covisit: int,
    pool_text: int,
    l2: float = 1e-3,
    iterations: int = 50,
) -> MergeHead:
    """A logistic head over `FEATURES` (standardised), each pooled item a positive or not: Newton steps
    with an `l2` penalty per example, from zero, until the step is below 1e-8."""
    x = np.concatenate([b.features for b in baskets]) if baskets else np.zeros((0, len(FEATURES)))
    y = np.concatenate([b.labels() for b in baskets]) if baskets else np.zeros(0)
    if not len(y) or y.min() == y.max():
        raise ValueError(f"cannot fit a merge on {len(y)} pooled items with {int(y.sum())} positives")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std > 1e-9, 1.0 / np.where(std > 1e-9, std, 1.0), 0.0)
    z = np.column_stack([(x - mean) * scale, np.ones(len(x))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2 * len(y))
    penalty[-1] = 0.0  # no penalty on the bias
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return MergeHead(version, signal_set, encoder, pool_covisit, pool_text, mean, scale, w[:-1], float(w[-1]))


def candidate_recall(orders: Sequence[Sequence[str]], baskets: Sequence[PooledBasket]) -> float:
    """Mean over baskets of the share of positives among the order's items."""
    if not baskets:
        return float("nan")
    return float(
        np.mean([len(b.positives.intersection(o)) / len(b.positives) for o, b in zip(orders, baskets, strict=True)])
    )


def covisit_orders(baskets: Sequence[PooledBasket], n: int) -> list[list[str]]:
    """Each basket's first `n` co-visitation candidates of its pool (what the merge competes with)."""
    return [[i for i, r in zip(b.pool.items, b.pool.covisit_rank, strict=True) if 0 <= r < n] for b in baskets]
