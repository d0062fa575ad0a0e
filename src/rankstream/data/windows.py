"""Training windows: the train split's last weeks, every basket seen through the live tables just before it.

A basket's candidates and signals come from the tables the scorer would have read at that moment
(`rankstream.data.live_instances`: every earlier event replayed through the tables job's shares), never
from tables that already contain the basket, so the signals a model learns from mean what they mean
when it is judged and served. The windows only group the baskets by time for the run record.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from rankstream.data.instances import Instance, OpenTarget
from rankstream.data.live_instances import PARTITIONS, Choose, live_instances
from rankstream.stream.candidates import in_catalog
from rankstream.stream.live import LiveParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Baskets in [start, end) and their signal rows, each read from the live tables just before it."""

    start: datetime
    end: datetime
    instances: list[Instance]
    signals: list[np.ndarray]  # one `candidate_signals` matrix per instance, in `ranked_candidates` order


def ranked_candidates(inst: Instance, catalog: Mapping[str, str]) -> list[str]:
    """An instance's candidates as the scorer ranks them (`stream.candidates.in_catalog`)."""
    return in_catalog(inst.candidates, catalog)


def training_windows(
    interactions: pd.DataFrame,
    train_end: datetime,
    catalog: Mapping[str, str],
    *,
    windows: int = 4,
    days: int = 30,
    n_candidates: int = 50,
    params: LiveParams | None = None,
    partitions: int = PARTITIONS,
    open_baskets: int = 0,
    open_target: OpenTarget = "rest",
    choose: Choose | None = None,
) -> list[Window]:
    """`windows` consecutive windows of `days` ending at `train_end`, oldest first (empty ones skipped);
    `open_baskets` open states of each basket (their positives: `open_target`) join its instance
    (`eligible_baskets`); `choose`: the candidates another way than co-visitation's first `n_candidates`
    (`live_instances`)."""
    end_ts = pd.Timestamp(train_end)
    bounds = [end_ts - timedelta(days=w * days) for w in range(windows, -1, -1)]
    ts = interactions["ts"]
    frame = interactions.loc[(ts >= bounds[0]) & (ts < end_ts)]
    live = live_instances(
        interactions.loc[ts < end_ts],
        frame,
        catalog,
        n_candidates=n_candidates,
        params=params,
        partitions=partitions,
        open_baskets=open_baskets,
        open_target=open_target,
        choose=choose,
    )
    rows = live.signals or []
    out = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        picked = [k for k, inst in enumerate(live.instances) if start <= inst.ts < end]
        if not picked:
            log.warning("training window %s..%s skipped: no basket in it with a history and a new item", start, end)
            continue
        out.append(
            Window(
                start.to_pydatetime(),
                end.to_pydatetime(),
                [live.instances[k] for k in picked],
                [rows[k] for k in picked],
            )
        )
        log.info("training window %s..%s: %d instances", start.date(), end.date(), len(picked))
    return out
