"""Serve-time signals: a few numbers per candidate that the pair text cannot carry.

The cross-encoder reads titles; what predicts the next basket on this data is mostly structure
(co-visitation in both directions, recency and breadth of an item's sales). One function computes these
numbers for one user's candidate list, and training, evaluation and the scorer all call it, so a model
is fed at serving time exactly what it learned from. Pure Python and numpy: the scorer image has no torch.

Inputs: the user's history (newest first), the candidate list, co-visitation neighbour lists (at least
those of the 5 newest history items and of every candidate), per-item sales statistics (`ItemStats`) and
the catalog titles. Neighbours and statistics are the live tables at the moment of scoring
(`stream.live`: the merged shares, `ItemCounts.stats_at`), in training and evaluation as in the scorer
(`rankstream.data.live_instances` replays them offline). A model artifact records `SIGNALS.version`; the
scorer refuses one built on another signal set, so any change to the list below, or to the tables it
reads, must bump the version.
"""

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from rankstream.stream.candidates import covisit_votes


@dataclass(frozen=True)
class SignalSet:
    version: str
    names: tuple[str, ...]


SIGNALS = SignalSet(
    # -live-: the inputs are the live tables at the basket's time; v1 read tables frozen per training
    # window (and the train split's at serving), so a v1 model's head is fitted to other distributions.
    # live-v2: the tables' co-visitation decays with a 14-day half-life (30 in live-v1).
    version="covisit-pop-8-live-v2",
    names=(
        "vote5_log",  # log(co-visitation vote of the 5 newest items + 1e-3): the candidate order's own score
        "rev_log",  # log(reverse vote + 1e-3): history items found in the candidate's neighbour list
        "nrev50",  # how many of the 50 newest history items are in the candidate's neighbour list
        "tokcov",  # share of the candidate's title words (3+ letters) found in the history's titles
        "trend_ratio",  # log((baskets in the last 30 days + 1) / (all baskets + 30) * 10)
        "pop7_log",  # log1p(baskets in the 7 days ending on the day of scoring)
        "buyers_log",  # log1p(distinct buyers)
        "age_log",  # log1p(days from the item's first sale to the time of scoring)
    ),
)
HISTORY_ITEMS = 50  # history items the signals read (newest first); the scorer keeps 50 by default
RECENT_ITEMS = 5  # items whose votes make the co-visitation order (stream.candidates)
_EPS = 1e-3
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class ItemStats:
    """An item's sales up to the moment they are read (`stream.live.ItemCounts.stats_at`): counts of baskets."""

    baskets: int = 0
    baskets_7d: int = 0  # in the 7 days ending on the day read
    baskets_30d: int = 0  # in the 30 days ending on the day read
    buyers: int = 0
    age_days: int = 0  # whole days from its first sale to the moment read (0: never sold)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> "ItemStats":
        return cls(**json.loads(raw))


NO_STATS = ItemStats()


@lru_cache(maxsize=200_000)
def title_words(title: str) -> frozenset[str]:
    """The words a title is compared by: lower-case letter runs of 3 or more."""
    return frozenset(w for w in _WORD.findall(title.lower()) if len(w) > 2)


def candidate_signals(
    history: Sequence[str],
    candidates: Sequence[str],
    neighbours: Mapping[str, Sequence[str]],
    item_stats: Mapping[str, ItemStats],
    titles: Mapping[str, str],
) -> np.ndarray:
    """float32 [len(candidates), len(SIGNALS.names)]: one row per candidate, columns in SIGNALS order.

    `history` is newest first; only its `HISTORY_ITEMS` newest items are read. `neighbours` must hold
    the lists of the `RECENT_ITEMS` newest history items and of every candidate (missing ones count as
    empty), each list holding an item once, as every table writes them. Items without statistics get
    `NO_STATS`; items without a title have no words.
    """
    hist = list(history[:HISTORY_ITEMS])
    votes = covisit_votes(hist, neighbours, RECENT_ITEMS)
    position: dict[str, int] = {}
    for pos, item in enumerate(hist):
        position.setdefault(item, pos)
    words: set[str] = set()
    for item in hist:
        title = titles.get(item)
        if title is not None:
            words.update(title_words(title))
    in_history = frozenset(position)
    rows = []
    for cand in candidates:
        rev, nrev = 0.0, 0
        nbs = neighbours.get(cand, ())
        # The history items in the list, found in C; then only those visited, by rank, so the sum is the
        # one a walk down the whole list makes (this loop was most of the scorer's signal time).
        hits = in_history.intersection(nbs)
        if hits:
            nrev = len(hits)
            for rank in sorted(map(nbs.index, hits)):
                rev += 1.0 / ((1 + position[nbs[rank]]) * (1 + rank))
        title = titles.get(cand)
        own = title_words(title) if title is not None else frozenset()
        cover = len(own & words) / len(own) if own else 0.0
        s = item_stats.get(cand, NO_STATS)
        rows.append(
            (
                math.log(votes.get(cand, 0.0) + _EPS),
                math.log(rev + _EPS),
                nrev,
                cover,
                math.log((s.baskets_30d + 1) / (s.baskets + 30) * 10),
                math.log1p(s.baskets_7d),
                math.log1p(s.buyers),
                math.log1p(s.age_days),
            )
        )
    # One conversion for the whole list: a numpy row assignment per candidate cost as much as its maths.
    return np.array(rows, dtype=np.float32).reshape(len(candidates), len(SIGNALS.names))
