"""Ranking instances: one per (user, basket), shared by training, evaluation and every model compared.

An instance freezes what the scorer would know just before the basket (the user's history) and what
happened (the basket's new items). Candidates come from the same function the scorer serves with, so a
model is trained and judged on exactly the lists it will rank in production.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd

from rankstream.data.formats import basket_keys
from rankstream.stream.candidates import covisit_candidates

log = logging.getLogger(__name__)

# Between a basket's key and k in the key of its open state after k lines (basket keys use \x1f and "@").
# Tell open states by `is_open`, never by this mark alone: a data set's own ids may hold it.
OPEN_MARK = "\x1e"
# What an open state's positives are: every line still to come that is new to the user ("rest"), or only
# the next line, when it is new ("next"). A scorer rewrites a user's list after every line, so a list is
# on screen until the next line only: "next" is the event the list is judged by (`bench live`).
OpenTarget = Literal["rest", "next"]
OPEN_TARGETS: tuple[OpenTarget, ...] = ("rest", "next")


@dataclass(frozen=True)
class Instance:
    """A user's state before one basket, its candidate list, and the basket's new items."""

    user_id: str
    ts: datetime
    history: tuple[str, ...]  # newest first, each item once, everything before the basket
    candidates: tuple[str, ...]  # best first by co-visitation: the non-neural baseline order
    positives: frozenset[str]  # basket items not already in history


def _micros(ts: pd.Series) -> np.ndarray:
    # One unit whatever resolution the frame came with, so times from two frames compare.
    return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()


def _targets(split_frame: pd.DataFrame) -> pd.DataFrame:
    """One row per basket in the split: user, start time (µs), key, and its distinct items."""
    rows = pd.DataFrame(
        {
            "key": basket_keys(split_frame).to_numpy(),
            "user_id": split_frame["user_id"].to_numpy(),
            "item_id": split_frame["item_id"].to_numpy(),
            "t": _micros(split_frame["ts"]),
        }
    )
    baskets = rows.groupby("key", sort=False).agg(
        user_id=("user_id", "first"),
        t=("t", "min"),
        items=("item_id", lambda s: frozenset(s)),
        lines=("item_id", lambda s: tuple(dict.fromkeys(s))),  # distinct, in the order they were written
    )
    return baskets.reset_index().sort_values(["user_id", "t", "key"], kind="stable")


def _open(
    t: int,
    user: str,
    key: str,
    before: dict[str, None],
    lines: tuple[str, ...],
    ks: Sequence[int],
    target: OpenTarget = "rest",
) -> list[tuple[int, str, str, tuple[str, ...], frozenset[str]]]:
    """The basket open after its first k lines, for each k: those lines are the newest history, the lines
    still to come that are new to the user are the positives (`target` "next": the next line alone)."""
    out = []
    for k in ks:
        seen = dict(before)
        for item in lines[:k]:
            seen.pop(item, None)
            seen[item] = None
        positives = frozenset(lines[k : k + 1] if target == "next" else lines[k:]).difference(seen)
        if positives:
            out.append((t, user, f"{key}{OPEN_MARK}{k}", tuple(reversed(seen)), positives))
    return out


def _eligible(
    interactions_all: pd.DataFrame,
    targets: pd.DataFrame,
    open_baskets: int = 0,
    seed: int = 0,
    open_target: OpenTarget = "rest",
) -> list[tuple[int, str, str, tuple[str, ...], frozenset[str]]]:
    """(t, user, key, history, positives) for every target basket with a history and a new item, and for
    up to `open_baskets` of each basket's open states (`_open`, prefixes drawn with `seed`)."""
    rng = np.random.default_rng(seed)
    rows = interactions_all.loc[interactions_all["user_id"].isin(set(targets["user_id"])), ["user_id", "item_id"]]
    rows = rows.assign(t=_micros(interactions_all.loc[rows.index, "ts"]))
    # By user, then time; stable, so items within one basket keep their written order.
    rows = rows.sort_values(["user_id", "t"], kind="stable")
    u_sorted = rows["user_id"].to_numpy()
    i_sorted = rows["item_id"].to_numpy()
    t_sorted = rows["t"].to_numpy()
    first = ~pd.Series(u_sorted).duplicated().to_numpy()
    starts = dict(zip(u_sorted[first], np.flatnonzero(first), strict=True))

    out = []
    for user, group in targets.groupby("user_id", sort=False):
        if user not in starts:  # the user has no rows in interactions_all: no history anywhere
            continue
        pos = int(starts[user])
        # dict as an ordered set: re-inserting an item moves it to the newest end.
        seen: dict[str, None] = {}
        for t, key, items, lines in zip(group["t"], group["key"], group["items"], group["lines"], strict=True):
            while pos < len(u_sorted) and u_sorted[pos] == user and t_sorted[pos] < t:
                seen.pop(i_sorted[pos], None)
                seen[i_sorted[pos]] = None
                pos += 1
            if open_baskets and len(lines) > 1:
                n = min(open_baskets, len(lines) - 1)
                ks = sorted(rng.choice(np.arange(1, len(lines)), size=n, replace=False).tolist())
                out.extend(_open(int(t), user, key, seen, lines, ks, open_target))
            if not seen:
                continue
            positives = items.difference(seen)
            if positives:
                out.append((int(t), user, key, tuple(reversed(seen)), positives))
    return out


Eligible = tuple[int, str, str, tuple[str, ...], frozenset[str]]  # (t in µs, user, key, history, positives)


def eligible_baskets(
    interactions_all: pd.DataFrame,
    split_frame: pd.DataFrame,
    *,
    open_baskets: int = 0,
    seed: int = 0,
    open_target: OpenTarget = "rest",
) -> tuple[list[Eligible], int]:
    """The split's eligible baskets in time order (ties by user, then key), and how many baskets it has.

    A basket is eligible when its user has a history before it and it holds an item not in that history.
    With `open_baskets` > 0, each basket of two or more distinct items also gives up to that many open
    states (drawn with `seed`): the basket after its first k lines, as the scorer sees a user in the middle
    of one (those lines the newest history, the rest of the basket the positives, the time the basket's;
    with `open_target` "next", the next line alone, and no state where that line is not new to the user).
    Their key is the basket's, `OPEN_MARK` and k; the draw of k does not depend on `open_target`. Training
    reads them; gates and the headline evaluation count whole baskets only.
    """
    if split_frame.empty:
        return [], 0
    targets = _targets(split_frame)
    if open_target not in OPEN_TARGETS:
        raise ValueError(f"open_target must be one of {OPEN_TARGETS}, not {open_target!r}")
    eligible = _eligible(interactions_all, targets, open_baskets, seed, open_target)
    eligible.sort(key=lambda e: (e[0], e[1], e[2]))
    return eligible, len(targets)


def is_open(eligible: Sequence[Eligible], split_frame: pd.DataFrame) -> list[bool]:
    """Per entry of `eligible_baskets(..., split_frame, open_baskets=...)`: an open state, not a basket."""
    baskets = set(basket_keys(split_frame))
    return [key not in baskets for _, _, key, _, _ in eligible]


def sample_eligible(eligible: Sequence[Eligible], max_instances: int | None, seed: int) -> list[Eligible]:
    """A seeded uniform sample of at most `max_instances` baskets (all of them with None), still in time order."""
    if max_instances is None or len(eligible) <= max_instances:
        return list(eligible)
    keep = np.sort(np.random.default_rng(seed).choice(len(eligible), size=max_instances, replace=False))
    return [eligible[k] for k in keep]


def instance_at(basket: Eligible, candidates: Sequence[str]) -> Instance:
    """The Instance of one eligible basket with its candidate list."""
    t, user, _key, history, positives = basket
    ts = pd.Timestamp(t, unit="us", tz="UTC").to_pydatetime()
    return Instance(user_id=user, ts=ts, history=history, candidates=tuple(candidates), positives=positives)


def build_instances(
    interactions_all: pd.DataFrame,
    split_frame: pd.DataFrame,
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    n_candidates: int = 50,
    max_instances: int | None = None,
    seed: int = 0,
) -> list[Instance]:
    """One Instance per basket in `split_frame`, in time order, candidates from fixed tables.

    History is drawn from `interactions_all` (every split up to the basket), so a test basket sees the
    user's train and valid purchases. Baskets with no history or no new item are skipped. With
    `max_instances`, a seeded uniform sample of the eligible baskets is kept, still in time order.
    Training and evaluation read the live tables at each basket's time instead
    (`rankstream.data.live_instances`); this is the frozen-table order they are compared with.
    """
    eligible, _ = eligible_baskets(interactions_all, split_frame)
    picked = sample_eligible(eligible, max_instances, seed)
    instances = [instance_at(e, covisit_candidates(e[3], neighbours, trending, n_candidates)) for e in picked]
    log.info("built %d instances (%d eligible) from %d rows", len(instances), len(eligible), len(split_frame))
    return instances


def candidate_recall(instances: Sequence[Instance]) -> float:
    """Share of instances with at least one positive among their candidates: the ranker's ceiling."""
    if not instances:
        return 0.0
    return sum(1 for x in instances if x.positives.intersection(x.candidates)) / len(instances)
