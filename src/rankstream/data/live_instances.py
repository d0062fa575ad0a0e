"""Instances as the scorer sees them: every basket with the live tables just before it.

One walk over the events in time order through a `LiveReplay` (the tables job's shares, replayed
offline): before each eligible basket, every event with an earlier time is applied, and nothing at or
after it. Then the basket's candidates are `covisit_candidates` over the merged neighbours and trending
(as `stream.batch.candidate_pairs` builds them), and their signals are `candidate_signals` with each
candidate's `ItemCounts.stats_at(basket time)` (as `stream.batch.user_signals` computes them). Training
windows, the validation set, the compress and recompress gates and the end-to-end evaluation all come
through here, so a model learns and is judged on the tables it is served with.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rankstream.data.instances import (
    Instance,
    OpenTarget,
    eligible_baskets,
    instance_at,
    is_open,
    sample_eligible,
)
from rankstream.data.live_replay import LiveReplay, replay_events
from rankstream.stream.candidates import covisit_candidates, in_catalog
from rankstream.stream.live import LiveParams
from rankstream.stream.signals import RECENT_ITEMS, candidate_signals

log = logging.getLogger(__name__)

PARTITIONS = 4  # the shares `rankstream load` seeds by default: the sums the scorer reads
# Another way to pick a basket's candidates from the tables (a learned merge: `rankstream.evaluation.merge`):
# (replay just before the basket, history newest first, basket time in ms) -> (candidates, their signal rows).
Choose = Callable[[LiveReplay, Sequence[str], int], tuple[list[str], np.ndarray]]


@dataclass(frozen=True)
class LiveInstances:
    """A split's instances (candidates from the live tables) and, when asked for, their signal rows."""

    instances: list[Instance]
    signals: list[np.ndarray] | None  # per instance, rows in `in_catalog(candidates)` order
    eligible: int  # eligible baskets (and open states, when asked for) before any sampling
    baskets: int  # every basket of the split
    opened: list[bool]  # per instance: an open state of a basket (`eligible_baskets`), not a basket

    def only(self, opened: bool) -> "LiveInstances":
        """The baskets alone (False) or the open states alone (True), in order, with their signal rows."""
        keep = [k for k, o in enumerate(self.opened) if o == opened]
        signals = None if self.signals is None else [self.signals[k] for k in keep]
        return LiveInstances(
            [self.instances[k] for k in keep], signals, self.eligible, self.baskets, [opened] * len(keep)
        )


def live_candidates(replay: LiveReplay, history: Sequence[str], n: int) -> list[str]:
    """`covisit_candidates` over the replay's current tables, newest history first."""
    return covisit_candidates(history, replay.neighbours(history[:RECENT_ITEMS]), replay.trending(), n)


def live_signals(
    replay: LiveReplay, history: Sequence[str], ranked: Sequence[str], catalog: Mapping[str, str], at_ms: int
) -> np.ndarray:
    """`candidate_signals` of `ranked` (the candidates as the scorer ranks them) from the replay's current
    tables, each candidate's statistics taken at `at_ms`."""
    lists = replay.neighbours(dict.fromkeys([*history[:RECENT_ITEMS], *ranked]))
    counts = replay.counts(ranked)
    stats = {c: counts[c].stats_at(at_ms) for c in ranked}
    return candidate_signals(history, ranked, lists, stats, catalog)


def live_instances(
    interactions_all: pd.DataFrame,
    split_frame: pd.DataFrame,
    catalog: Mapping[str, str],
    *,
    n_candidates: int = 50,
    with_signals: bool = True,
    max_instances: int | None = None,
    seed: int = 0,
    params: LiveParams | None = None,
    partitions: int = PARTITIONS,
    open_baskets: int = 0,
    open_target: OpenTarget = "rest",
    choose: Choose | None = None,
    tables_until_ms: int | None = None,
) -> LiveInstances:
    """One Instance per eligible basket of `split_frame`, in time order, read from the live tables.

    Args:
        interactions_all: every event the tables and histories may draw on (all splits up to the
            baskets); replayed in time order from the first.
        split_frame: the rows whose baskets become instances (eligible as in `build_instances`).
        catalog: item -> title: signals are computed for the candidates the scorer ranks (`in_catalog`).
        with_signals: also compute each instance's signal rows.
        max_instances: a seeded sample of the eligible baskets (`sample_eligible`); every event is still
            applied, so a sampled basket sees the same tables as in the full walk.
        params, partitions: the tables' settings and share count (the scorer's defaults).
        open_baskets: also up to this many open states of each basket (`eligible_baskets`), read from the
            tables just before the basket, like the basket itself; `open_target`: their positives, the
            rest of the basket or its next line alone (`eligible_baskets`).
        choose: the candidates and their signal rows from the tables (default: the co-visitation order
            of `n_candidates`, `live_candidates`, and `live_signals`).
        tables_until_ms: apply no event at or after this time to the tables (histories still grow): the
            tables a scorer reads when they were seeded up to then and never moved (`bench live`'s frozen arm).
    """
    eligible, baskets = eligible_baskets(
        interactions_all, split_frame, open_baskets=open_baskets, seed=seed, open_target=open_target
    )
    picked = sample_eligible(eligible, max_instances, seed)
    replay = LiveReplay(params or LiveParams(), partitions)
    events = replay_events(interactions_all) if picked else []
    instances: list[Instance] = []
    opened = is_open(picked, split_frame) if open_baskets else [False] * len(picked)
    signals: list[np.ndarray] | None = [] if with_signals else None
    k = 0
    for basket in picked:
        at_ms = basket[0] // 1000
        upto = at_ms if tables_until_ms is None else min(at_ms, tables_until_ms)
        while k < len(events) and events[k][2] < upto:
            replay.apply(*events[k])
            k += 1
        history = basket[3]
        if choose is not None:
            chosen, rows = choose(replay, history, at_ms)
            instances.append(instance_at(basket, chosen))
            if signals is not None:
                signals.append(rows)
            continue
        inst = instance_at(basket, live_candidates(replay, history, n_candidates))
        instances.append(inst)
        if signals is not None:
            signals.append(live_signals(replay, history, in_catalog(inst.candidates, catalog), catalog, at_ms))
    log.info(
        "live instances: %d of %d eligible (%d of them open states; %d baskets in the split), %d events replayed",
        len(instances),
        len(eligible),
        sum(opened),
        baskets,
        replay.applied,
    )
    return LiveInstances(instances, signals, len(eligible), baskets, opened)
