"""Co-purchased title pairs from the training split: what the bi-encoder learns that two titles belong
together (`rankstream.compression.biencoder`).

A pair is two distinct items the co-visitation tables link (same basket, or the user's next basket
within 7 days: `covisit_weights`, the definition the tables use), so the text vectors learn the same
relation the co-visitation candidates serve. Only the train split goes in, so valid and test baskets
stay unseen by the vectors they judge.
"""

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import NamedTuple

import numpy as np
import pandas as pd

from rankstream.data.covisit import covisit_weights

log = logging.getLogger(__name__)

# Past this many pairs an item takes no more; see `copurchase_pairs` for why.
CAP_PER_ITEM = 50


class TitlePair(NamedTuple):
    """Two co-purchased items and their titles."""

    a: str
    b: str
    title_a: str
    title_b: str


def copurchase_pairs(
    train: pd.DataFrame,
    catalog: Mapping[str, str],
    n: int,
    *,
    cap_per_item: int = CAP_PER_ITEM,
    seed: int = 0,
    next_window: timedelta = timedelta(days=7),
) -> list[TitlePair]:
    """Up to `n` distinct co-purchased pairs of `train`, in a seeded random order.

    Pairs are drawn without replacement with probability proportional to their co-visitation weight
    (Efraimidis-Spirakis keys: the order a weighted draw would take them in). A pair is kept only when it
    is among the first `cap_per_item` drawn of both its items: drawn by weight alone, the few items in
    thousands of baskets would fill most pairs, the vectors would learn those items' neighbourhoods and
    little of the long tail, where text is the only signal for items co-visitation barely knows.
    Pairs of an item without a title, and pairs of two identical titles (nothing to learn), are left out.
    The same inputs and `seed` give the same pairs in the same order.
    """
    w = covisit_weights(train, next_window)
    ids = w.item_ids
    # Each unordered pair once; the weights are symmetric, so (i, j) with i < j carries all of them.
    one = w.i < w.j
    i, j, weight = w.i[one], w.j[one], w.weight[one]
    titled = np.array([x in catalog for x in ids], dtype=bool)
    title = [catalog.get(x, "") for x in ids]
    ok = titled[i] & titled[j]
    i, j, weight = i[ok], j[ok], weight[ok]
    ok = np.array([title[a] != title[b] for a, b in zip(i, j, strict=True)], dtype=bool)
    i, j, weight = i[ok], j[ok], weight[ok]
    if not len(i) or n <= 0:
        return []
    key = np.random.default_rng(seed).exponential(size=len(i)) / weight
    keep = _first_per_item(i, j, key, cap_per_item)
    order = np.flatnonzero(keep)[np.argsort(key[keep], kind="stable")][:n]
    log.info(
        "co-purchase pairs: %d of %d weighted pairs (%d within the cap of %d per item)",
        len(order),
        len(i),
        int(keep.sum()),
        cap_per_item,
    )
    return [TitlePair(ids[i[k]], ids[j[k]], title[i[k]], title[j[k]]) for k in order]


def _first_per_item(i: np.ndarray, j: np.ndarray, key: np.ndarray, cap: int) -> np.ndarray:
    """Whether each pair (i, j) is among the `cap` lowest-keyed pairs of both its items."""
    m = len(i)
    item = np.concatenate([i, j])
    keys = np.concatenate([key, key])
    order = np.lexsort((keys, item))
    sorted_item = item[order]
    starts = np.flatnonzero(np.r_[True, sorted_item[1:] != sorted_item[:-1]])
    rank_sorted = np.arange(2 * m) - np.repeat(starts, np.diff(np.r_[starts, 2 * m]))
    rank = np.empty(2 * m, np.int64)
    rank[order] = rank_sorted
    keep: np.ndarray = np.maximum(rank[:m], rank[m:]) < cap
    return keep
