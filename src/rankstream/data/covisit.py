"""Co-visitation neighbours and trending items, computed from the training split only.

Both feed `rankstream.stream.candidates.covisit_candidates`. Computing them from train alone keeps
valid/test purchases out of the candidate lists a model is judged on.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from rankstream.data.formats import basket_keys

log = logging.getLogger(__name__)

SAME_BASKET_WEIGHT = 1.0
NEXT_BASKET_WEIGHT = 0.5


def _basket_items(train: pd.DataFrame) -> pd.DataFrame:
    """One row per (basket, item) with integer codes: basket b, item i, user u, basket time t."""
    keys = basket_keys(train)
    rows = pd.DataFrame(
        {
            "key": keys.to_numpy(),
            "user_id": train["user_id"].to_numpy(),
            "item_id": train["item_id"].to_numpy(),
            "ts": train["ts"].to_numpy(),
        }
    )
    # A basket happens when it starts; the same item twice in a basket is one co-visit, not two.
    rows["t"] = rows.groupby("key")["ts"].transform("min")
    rows = rows.drop_duplicates(["key", "item_id"])
    # int32 codes: the pair frames below are the largest tables prepare builds, so their width counts.
    rows["b"] = pd.factorize(rows["key"])[0].astype(np.int32)
    rows["u"] = pd.factorize(rows["user_id"])[0].astype(np.int32)
    return rows[["b", "u", "t", "item_id"]]


def _pairs(left: pd.DataFrame, right: pd.DataFrame, on: str) -> pd.DataFrame:
    """All (i, j) item pairs across `left` and `right` rows sharing `on`, without i == j."""
    pairs = left[[on, "i"]].merge(right[[on, "i"]].rename(columns={"i": "j"}), on=on)
    return pairs.loc[pairs["i"] != pairs["j"], ["i", "j"]]


@dataclass(frozen=True)
class CovisitWeights:
    """The co-visitation weight of every ordered item pair (i, j), i != j, of a split: the aligned arrays
    `i`, `j`, `weight` hold codes into `item_ids` (sorted ids, so comparing codes compares ids), each
    pair once, in both orders; `popularity[c]` is how many baskets hold item `c`."""

    item_ids: list[str]
    i: np.ndarray
    j: np.ndarray
    weight: np.ndarray
    popularity: np.ndarray


def covisit_weights(train: pd.DataFrame, next_window: timedelta = timedelta(days=7)) -> CovisitWeights:
    """Weight of (a, b): 1.0 for every basket holding both, plus 0.5 for every time one is in a basket and
    the other in the same user's next basket no more than `next_window` later (counted both ways)."""
    rows = _basket_items(train)
    item_ids, codes = _codes(rows["item_id"])
    rows["i"] = codes
    popularity = np.bincount(codes.to_numpy(), minlength=len(item_ids))
    if rows.empty:
        empty = np.zeros(0, np.int64)
        return CovisitWeights(item_ids, empty, empty, np.zeros(0), popularity)
    i, j, w = _weights(rows, len(item_ids), next_window)
    return CovisitWeights(item_ids, i, j, w, popularity)


def covisitation(
    train: pd.DataFrame,
    k: int = 30,
    next_window: timedelta = timedelta(days=7),
) -> dict[str, list[str]]:
    """Top-`k` co-visited neighbours per item, best first, by `covisit_weights`.

    Ties go to the more popular neighbour (baskets holding it), then to the smaller id.
    """
    weights = covisit_weights(train, next_window)
    item_ids, popularity = weights.item_ids, weights.popularity
    i, j, w = weights.i, weights.j, weights.weight
    if len(i) == 0:
        return {}

    # Sort each item's neighbours best first. Codes follow id order, so the last key (j) breaks the
    # remaining ties by id and the result never depends on row order.
    order = np.lexsort((j, -popularity[j], -w, i))
    i, j = i[order], j[order]
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    rank = np.arange(len(i)) - np.repeat(starts, np.diff(np.r_[starts, len(i)]))
    i, j = i[rank < k], j[rank < k]

    out: dict[str, list[str]] = {}
    bounds = np.flatnonzero(np.r_[True, i[1:] != i[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out[item_ids[i[lo]]] = [item_ids[x] for x in j[lo:hi]]
    log.info("co-visitation: %d items with neighbours, %d weighted pairs", len(out), len(order))
    return out


def _weights(rows: pd.DataFrame, n: int, next_window: timedelta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed weight per ordered item pair (i, j), as three aligned arrays."""
    same = _pairs(rows, rows, "b")

    # Each basket points at the same user's next basket; pair items across the two if close enough.
    baskets = rows.drop_duplicates("b")[["b", "u", "t"]].sort_values(["u", "t", "b"], kind="stable")
    nxt = baskets.groupby("u")[["b", "t"]].shift(-1)
    close = nxt["b"].notna() & ((nxt["t"] - baskets["t"]) <= next_window)
    link = pd.DataFrame({"b": baskets["b"][close], "nb": nxt["b"][close].astype(np.int32)})
    first = rows[["b", "i"]].merge(link, on="b")
    forward = _pairs(first, rows[["b", "i"]].rename(columns={"b": "nb"}), "nb")

    # One int64 key per ordered pair makes the sum a sort plus a bincount. Same-basket pairs come out
    # in both orders already; next-basket pairs are mirrored, as a-then-b says as much about b as a.
    keys = np.concatenate(
        [
            _key(same["i"], same["j"], n),
            _key(forward["i"], forward["j"], n),
            _key(forward["j"], forward["i"], n),
        ]
    )
    weights = np.concatenate([np.full(len(same), SAME_BASKET_WEIGHT), np.full(2 * len(forward), NEXT_BASKET_WEIGHT)])
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq // n, uniq % n, np.bincount(inverse, weights=weights, minlength=len(uniq))


def _key(i: pd.Series, j: pd.Series, n: int) -> np.ndarray:
    return i.to_numpy().astype(np.int64) * n + j.to_numpy()


def _codes(values: pd.Series) -> tuple[list[str], pd.Series]:
    """Integer codes in sorted id order, so comparing codes compares ids."""
    codes, uniques = pd.factorize(values, sort=True)
    return [str(u) for u in uniques], pd.Series(codes.astype(np.int32), index=values.index)


def trending(train: pd.DataFrame, days: int = 30, n: int = 100) -> list[str]:
    """The `n` items in the most baskets during the last `days` of `train`; ties by overall popularity, id."""
    if train.empty:
        return []
    rows = pd.DataFrame(
        {
            "key": basket_keys(train).to_numpy(),
            "item_id": train["item_id"].to_numpy(),
            "ts": train["ts"].to_numpy(),
        }
    ).drop_duplicates(["key", "item_id"])
    overall = rows["item_id"].value_counts()
    recent = rows.loc[rows["ts"] > rows["ts"].max() - pd.Timedelta(days=days), "item_id"].value_counts()
    table = pd.DataFrame({"recent": recent, "overall": overall[recent.index]})
    table = table.rename_axis("item_id").reset_index()
    table = table.sort_values(["recent", "overall", "item_id"], ascending=[False, False, True], kind="stable")
    return [str(x) for x in table["item_id"].head(n)]
