"""Training windows: the train split's last weeks, each seen through what was known before it began.

Co-visitation, trending and item statistics built on the whole train split already contain every train
basket, so on train instances they "predict" baskets they were computed from, and a model trained there
learns to trust them more than it should on the future. A window instead gets tables built from the
interactions before its start, exactly as valid and test get tables built from the train split: the
signals a model learns from have the same meaning as those it is judged and served on.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from rankstream.data.covisit import covisitation, trending
from rankstream.data.instances import Instance, build_instances
from rankstream.data.itemstats import item_stats
from rankstream.stream.candidates import in_catalog
from rankstream.stream.signals import ItemStats, candidate_signals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Baskets in [start, end), their instances, and the tables built from everything before `start`."""

    start: datetime
    end: datetime
    instances: list[Instance]
    neighbours: dict[str, list[str]]
    trending: list[str]
    item_stats: dict[str, ItemStats]


def ranked_candidates(inst: Instance, catalog: Mapping[str, str]) -> list[str]:
    """An instance's candidates as the scorer ranks them (`stream.candidates.in_catalog`)."""
    return in_catalog(inst.candidates, catalog)


def instance_signals(
    inst: Instance,
    neighbours: Mapping[str, Sequence[str]],
    stats: Mapping[str, ItemStats],
    catalog: Mapping[str, str],
) -> np.ndarray:
    """`candidate_signals` rows for `ranked_candidates(inst, catalog)`."""
    return candidate_signals(inst.history, ranked_candidates(inst, catalog), neighbours, stats, catalog)


def training_windows(
    interactions: pd.DataFrame,
    train_end: datetime,
    *,
    windows: int = 4,
    days: int = 30,
    k: int = 30,
    trending_days: int = 30,
    n_trending: int = 100,
    n_candidates: int = 50,
) -> list[Window]:
    """`windows` consecutive windows of `days` ending at `train_end`, oldest first (empty-past ones skipped)."""
    ts = interactions["ts"]
    end_ts = pd.Timestamp(train_end)
    out = []
    for w in range(windows, 0, -1):
        start, end = end_ts - timedelta(days=w * days), end_ts - timedelta(days=(w - 1) * days)
        past = interactions.loc[ts < start]
        frame = interactions.loc[(ts >= start) & (ts < end)]
        if past.empty or frame.empty:
            log.warning("training window %s..%s skipped: nothing before it or in it", start, end)
            continue
        neighbours = covisitation(past, k=k)
        trend = trending(past, days=trending_days, n=n_trending)
        instances = build_instances(interactions, frame, neighbours, trend, n_candidates=n_candidates)
        out.append(Window(start.to_pydatetime(), end.to_pydatetime(), instances, neighbours, trend, item_stats(past)))
        log.info("training window %s..%s: %d instances", start.date(), end.date(), len(instances))
    return out
