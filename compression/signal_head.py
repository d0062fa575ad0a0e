"""The linear head over serve-time signals: a convex fit that the cross-encoder starts from.

Fitted listwise (softmax cross-entropy over each candidate list, target uniform over its positives, the
loss the cross-encoder is then trained with) on standardised signals plus the position prior, with an L2
penalty. The result initialises PositionPriorBert's head (compression/model.py); fine-tuning moves it on.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rankstream.stream.errors import JobError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalHead:
    """score = prior_weight * prior[position] + sum_i weight[i] * (signal[i] - mean[i]) * scale[i]."""

    version: str
    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]  # 1 / standard deviation on the training rows
    weight: tuple[float, ...]
    prior_weight: float = 1.0

    def score(self, signals: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """The linear score of rows `signals` (and their position prior values): what the head adds."""
        z = (np.asarray(signals, np.float64) - np.asarray(self.mean)) * np.asarray(self.scale)
        out = z @ np.asarray(self.weight)
        return out if prior is None else out + self.prior_weight * np.asarray(prior)


# Long because standardising, padding the lists into one tensor and the LBFGS fit share the same arrays.
def fit_signal_head(
    lists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    version: str,
    names: Sequence[str],
    l2: float = 1e-2,
    max_iter: int = 200,
) -> SignalHead:
    """Fit a head on `lists` of (signals [n, F], labels [n], prior [n]); lists without a positive are skipped."""
    kept = [(x, y, p) for x, y, p in lists if len(y) and np.any(y > 0)]
    if not kept:
        raise JobError(
            "no training list has a positive to fit the signal head on; use more data or longer training windows"
        )
    n_feat = len(names)
    rows = np.concatenate([x for x, _, _ in kept]).astype(np.float64)
    if rows.shape[1] != n_feat:
        raise ValueError(f"lists have {rows.shape[1]} signals, names list {n_feat}")
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 0.0)  # a constant signal gets no weight
    width = max(len(y) for _, y, _ in kept)
    x = np.zeros((len(kept), width, n_feat))
    prior = np.zeros((len(kept), width))
    target = np.zeros((len(kept), width))
    mask = np.zeros((len(kept), width), dtype=bool)
    for k, (xs, ys, ps) in enumerate(kept):
        n = len(ys)
        x[k, :n] = (xs - mean) * scale
        prior[k, :n] = ps
        target[k, :n] = (ys > 0) / (ys > 0).sum()
        mask[k, :n] = True
    tx, tp, tt, tm = (torch.tensor(a) for a in (x, prior, target, mask))
    w = torch.zeros(n_feat, dtype=torch.float64, requires_grad=True)
    a = torch.ones((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, a], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        logits = (tx @ w + a * tp).masked_fill(~tm, float("-inf"))
        log_q = torch.log_softmax(logits, dim=1).masked_fill(~tm, 0.0)
        return -(tt * log_q).sum(dim=1).mean() + l2 * (w @ w)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    head = SignalHead(
        version=version,
        names=tuple(names),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weight=tuple(float(v) for v in w.detach()),
        prior_weight=float(a.detach()),
    )
    weights = {n: round(v, 3) for n, v in zip(names, head.weight, strict=True)}
    log.info(
        "signal head fitted on %d lists (loss %.4f): prior x%.3f, %s", len(kept), final, head.prior_weight, weights
    )
    return head
