"""A model's linear part (position prior + signal head, `linear.json` in the artifact) and the choice of
which candidates are worth cross-encoding that it makes."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Which of a list's candidates are cross-encoded, and the linear part's scores when not all are."""

    chosen: np.ndarray  # indices into the list, ascending
    linear: np.ndarray | None = None

    def assemble(self, scores: np.ndarray) -> np.ndarray:
        """The whole list's scores from the chosen candidates' ones."""
        if self.linear is None:
            return scores
        linear = self.linear
        rest = np.ones(len(linear), dtype=bool)
        rest[self.chosen] = False
        out = np.empty(len(linear), dtype=np.float32)
        out[self.chosen] = scores
        # Below every cross-encoded candidate, keeping the linear part's order among themselves.
        out[rest] = scores.min() - 1.0 + (linear[rest] - linear[rest].max())
        return out


@dataclass(frozen=True)
class LinearPart:
    """The non-text part of a model's logit: `position_bias[r]` for the candidate at co-visitation rank r,
    plus `weight . (signals - mean) * scale`. The graph adds the text's score to it; alone it is a cheap
    ranking used to choose which candidates are worth cross-encoding."""

    position_bias: np.ndarray  # [ranks]
    signal_mean: np.ndarray | None = None  # [signals], with scale and weight; None for a text-only model
    signal_scale: np.ndarray | None = None
    signal_weight: np.ndarray | None = None

    @classmethod
    def read(cls, path: Path, n_signals: int | None) -> "LinearPart":
        data = json.loads(Path(path).read_text())
        bias = np.asarray(data["position_bias"], dtype=np.float64)
        if data.get("signal_weight") is None:
            return cls(bias)
        parts = [np.asarray(data[k], dtype=np.float64) for k in ("signal_mean", "signal_scale", "signal_weight")]
        if n_signals is None or any(x.shape != (n_signals,) for x in parts):
            raise ValueError(f"its signal head has {[x.shape for x in parts]} weights, the model reads {n_signals}")
        return cls(bias, *parts)

    def to_json(self) -> str:
        def listed(x: np.ndarray | None) -> list[float] | None:
            return None if x is None else [float(v) for v in x]

        return json.dumps(
            {
                "position_bias": listed(self.position_bias),
                "signal_mean": listed(self.signal_mean),
                "signal_scale": listed(self.signal_scale),
                "signal_weight": listed(self.signal_weight),
            }
        )

    def scores(self, n: int, signals: np.ndarray | None) -> np.ndarray:
        """The linear part's score of the first `n` candidates (in co-visitation order)."""
        if n > len(self.position_bias):
            raise ValueError(f"the position prior covers {len(self.position_bias)} ranks, not {n}")
        out = self.position_bias[:n].copy()
        if self.signal_weight is not None:
            if signals is None:
                raise ValueError("this model's linear part reads signals; pass them")
            z = (np.asarray(signals, dtype=np.float64) - self.signal_mean) * self.signal_scale
            out += z @ self.signal_weight
        return out


def rerank_top(linear: np.ndarray, top: int) -> np.ndarray:
    """Indices of the `top` candidates the linear part ranks highest (ties: co-visitation order)."""
    return np.sort(np.argsort(-linear, kind="stable")[:top])
