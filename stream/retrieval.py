"""Merged candidates: co-visitation (live tables, trending fill) and text neighbours in one list.

One definition for the scorer, the evaluation and the fitting of the merge, so what is measured offline
is what is served. Two merges:

- The learned merge (`MergeHead`, `RANKSTREAM_MERGE_DIR`): a pool of the `pool_covisit` best co-visitation
  candidates and the `pool_text` nearest text neighbours, each item once; every pooled item gets the
  serve-time signals (`stream.signals`) and its place in each source (`merge_features`); a logistic
  head fitted on earlier baskets scores them and the best `n` are the candidates, best first. A list of
  50 taken from 250 by what predicts a purchase reaches more of what users buy next than the first 50
  of either source, and items nobody has bought yet come in through their titles.
- The interleave (`interleave`, without a head): the first `MERGE_HEAD` items of the co-visitation list,
  then one text neighbour and one item of that list in turn, each item once, up to `n`.

A text neighbour is an item whose title vector is closest to those of the user's newest items
(`stream.textindex`): the only source that can propose an item nobody has bought yet.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankstream.stream.signals import SIGNALS

MERGE_HEAD = 10
MERGE_FILE = "merge.json"
# Beyond the signals, what the merge reads of a pooled item: where each source put it, and its title's
# cosine to the user's newest items. An item a source did not propose gets the rank `ABSENT_RANK`.
PLACE_FEATURES = ("from_covisit", "covisit_rank_log", "cosine", "from_text", "text_rank_log")
FEATURES = (*SIGNALS.names, *PLACE_FEATURES)
ABSENT_RANK = 1000


def interleave(primary: Sequence[str], secondary: Sequence[str], n: int, head: int = MERGE_HEAD) -> list[str]:
    """The first `head` of `primary`, then one of `secondary` and one of `primary` in turn, each item once,
    up to `n` (the interleave of the module doc)."""
    out: list[str] = []
    taken: set[str] = set()

    def take(source: Sequence[str], at: int) -> int:
        """Appends the first not-yet-taken item of `source` from `at`; returns the position after it."""
        while at < len(source):
            item = source[at]
            at += 1
            if item not in taken:
                taken.add(item)
                out.append(item)
                break
        return at

    p = s = 0
    while p < len(primary) and len(out) < min(head, n):
        p = take(primary, p)
    while len(out) < n and (p < len(primary) or s < len(secondary)):
        s = take(secondary, s)
        if len(out) < n:
            p = take(primary, p)
    return out


@dataclass(frozen=True)
class Pool:
    """A user's pooled candidates: the co-visitation list, then the text neighbours not in it."""

    items: list[str]
    covisit_rank: np.ndarray  # int [items]: place in the co-visitation list, -1 when not in it
    text_rank: np.ndarray  # int [items]: place among the text neighbours, -1 when not among them


def pool(covisit: Sequence[str], text: Sequence[str]) -> Pool:
    """Both sources' items, each once: co-visitation order first (its items are scored anyway), then the
    text neighbours it lacks."""
    c_rank = {item: r for r, item in enumerate(dict.fromkeys(covisit))}
    t_rank = {item: r for r, item in enumerate(dict.fromkeys(text))}
    items = [*c_rank, *(t for t in t_rank if t not in c_rank)]
    return Pool(
        items,
        np.array([c_rank.get(i, -1) for i in items], dtype=np.int64),
        np.array([t_rank.get(i, -1) for i in items], dtype=np.int64),
    )


def merge_features(p: Pool, signals: np.ndarray, cosine: Mapping[str, float]) -> np.ndarray:
    """float64 [items, len(FEATURES)]: each pooled item's signal row, then its `PLACE_FEATURES`.

    `signals`: `candidate_signals` of `p.items`, in that order; `cosine`: item -> its title's similarity
    to the user (missing: 0, an item without a vector)."""
    n = len(p.items)
    if signals.shape != (n, len(SIGNALS.names)):
        raise ValueError(f"{signals.shape} signal rows for {n} pooled items")

    def place(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = rank >= 0
        return present.astype(np.float64), np.log1p(np.where(present, rank, ABSENT_RANK).astype(np.float64))

    from_c, c_log = place(p.covisit_rank)
    from_t, t_log = place(p.text_rank)
    cos = np.array([cosine.get(i, 0.0) for i in p.items], dtype=np.float64)
    return np.column_stack([signals.astype(np.float64), from_c, c_log, cos, from_t, t_log]).reshape(n, len(FEATURES))


class MergeError(ValueError):
    """A merge file that cannot be used, and why."""


@dataclass(frozen=True)
class MergeHead:
    """A fitted learned merge: how many items each source pools, and a logistic head over `FEATURES`."""

    version: str
    signal_set: str  # the SIGNALS version it was fitted on: the scorer refuses another
    encoder: str  # the bi-encoder version whose vectors it was fitted on ("" for none)
    pool_covisit: int
    pool_text: int
    mean: np.ndarray  # [features]
    scale: np.ndarray  # [features]: 1 / standard deviation
    weight: np.ndarray  # [features]
    bias: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The head's logit per pooled item."""
        return np.asarray(((features - self.mean) * self.scale) @ self.weight + self.bias, dtype=np.float64)

    def select(self, features: np.ndarray, n: int) -> np.ndarray:
        """Indices of the `n` pooled items the head scores highest, best first; ties keep the pool order."""
        return np.argsort(-self.scores(features), kind="stable")[:n]

    def to_json(self, **extra: object) -> str:
        body = {
            "version": self.version,
            "features": list(FEATURES),
            "signal_set": self.signal_set,
            "encoder": self.encoder,
            "pool_covisit": self.pool_covisit,
            "pool_text": self.pool_text,
            "mean": [float(x) for x in self.mean],
            "scale": [float(x) for x in self.scale],
            "weight": [float(x) for x in self.weight],
            "bias": float(self.bias),
            **extra,
        }
        return json.dumps(body, indent=2)

    @classmethod
    def parse(cls, raw: str | bytes) -> "MergeHead":
        """A merge file's head, checked whole: anything wrong raises `MergeError` saying what."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MergeError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MergeError(f"a JSON object expected, found {type(data).__name__}")
        if data.get("features") != list(FEATURES):
            raise MergeError(f"fitted on features {data.get('features')!r}, this code computes {list(FEATURES)}")

        def text(key: str) -> str:
            v = data.get(key)
            if not isinstance(v, str):
                raise MergeError(f"{key!r} must be a string, found {v!r}")
            return v

        def count(key: str, low: int) -> int:
            v = data.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= 10_000:
                raise MergeError(f"{key!r} must be a whole number from {low} to 10000, found {v!r}")
            return v

        def numbers(key: str) -> np.ndarray:
            v = data.get(key)
            ok = isinstance(v, list) and len(v) == len(FEATURES)
            ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            if not ok:
                raise MergeError(f"{key!r} must be {len(FEATURES)} finite numbers, found {v!r}")
            return np.asarray(v, dtype=np.float64)

        bias = data.get("bias")
        if not isinstance(bias, int | float) or isinstance(bias, bool) or not math.isfinite(bias):
            raise MergeError(f"'bias' must be a finite number, found {bias!r}")
        return cls(
            text("version"),
            text("signal_set"),
            text("encoder"),
            count("pool_covisit", 1),
            count("pool_text", 0),
            numbers("mean"),
            numbers("scale"),
            numbers("weight"),
            float(bias),
        )

    @classmethod
    def read(cls, directory: Path) -> "MergeHead":
        """The head in `directory`/merge.json, refused (`MergeError`) when it is unreadable, malformed or
        fitted on another signal set than the one this code computes."""
        path = Path(directory) / MERGE_FILE
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MergeError(f"{path}: {exc.strerror or exc}") from None
        try:
            head = cls.parse(raw)
        except MergeError as exc:
            raise MergeError(f"{path}: {exc}") from None
        if head.signal_set != SIGNALS.version:
            raise MergeError(
                f"{path}: fitted on signal set {head.signal_set!r}, this code computes {SIGNALS.version!r}"
            )
        return head


def learned_merge(
    head: MergeHead, p: Pool, signals: np.ndarray, cosine: Mapping[str, float], n: int
) -> tuple[list[str], np.ndarray]:
    """The `n` candidates the head picks from the pool, best first, and their signal rows in that order."""
    chosen = head.select(merge_features(p, signals, cosine), n)
    return [p.items[k] for k in chosen], signals[chosen]
