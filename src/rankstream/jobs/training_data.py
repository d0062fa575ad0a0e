"""Training data for `rankstream compress`:
instances from the train split's last windows (rankstream.data.windows), each basket's candidates and
signals from the live tables just before it, the position prior, and the linear signal head fitted on all
of them.
"""

import logging
from dataclasses import dataclass

import numpy as np

from rankstream.compression.distil import Group
from rankstream.compression.model import position_prior
from rankstream.compression.pairs import make_groups
from rankstream.compression.signal_head import SignalHead, fit_signal_head
from rankstream.data.instances import Instance, OpenTarget
from rankstream.data.live_instances import Choose
from rankstream.data.prepare import Prepared
from rankstream.data.windows import ranked_candidates, training_windows
from rankstream.jobs.presets import HEAD_L2, CompressPreset
from rankstream.jobs.runs import TrainWindow
from rankstream.stream.errors import JobError
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalTrainingData:
    instances: list[Instance]  # the (sampled) training instances
    signals: list[np.ndarray]  # one candidate_signals matrix per instance, in ranked_candidates order
    prior: list[float]  # log P(positive | position), from every window instance
    head: SignalHead  # fitted on every window instance, not only the sampled ones
    windows: list[TrainWindow]  # what each window held, for the run record


def signal_training_data(
    prepared: Prepared,
    *,
    windows: int = 4,
    days: int = 30,
    max_instances: int | None = None,
    l2: float = HEAD_L2,
    seed: int = 0,
    open_baskets: int = 0,
    open_target: OpenTarget = "rest",
    choose: Choose | None = None,
) -> SignalTrainingData:
    """Window instances with their signals, the position prior and the fitted head (see module doc);
    `choose`: the candidates of a learned merge instead of co-visitation's (`live_instances`)."""
    catalog = prepared.catalog
    found = training_windows(
        prepared.interactions,
        prepared.split.train_end,
        catalog,
        windows=windows,
        days=days,
        open_baskets=open_baskets,
        open_target=open_target,
        choose=choose,
    )
    pool = [(inst, rows) for w in found for inst, rows in zip(w.instances, w.signals, strict=True)]
    if not pool:
        raise JobError(
            f"no training instances in {windows} windows of {days} days before {prepared.split.train_end}; "
            "the train split is too short for them (use fewer or shorter windows)"
        )
    prior = position_prior([inst for inst, _ in pool], catalog)
    signals = [rows for _, rows in pool]
    lists = []
    for (inst, _), rows in zip(pool, signals, strict=True):
        ranked = ranked_candidates(inst, catalog)
        labels = np.array([c in inst.positives for c in ranked], dtype=np.float64)
        lists.append((rows, labels, np.array([prior[min(r, len(prior) - 1)] for r in range(len(ranked))])))
    head = fit_signal_head(lists, version=SIGNALS.version, names=SIGNALS.names, l2=l2)
    picked: list[int] = list(range(len(pool)))
    if max_instances is not None and len(pool) > max_instances:
        picked = sorted(np.random.default_rng(seed).choice(len(pool), size=max_instances, replace=False).tolist())
    return SignalTrainingData(
        instances=[pool[i][0] for i in picked],
        signals=[signals[i] for i in picked],
        prior=prior,
        head=head,
        windows=[TrainWindow(str(w.start), str(w.end), len(w.instances)) for w in found],
    )


def preset_training_lists(
    prepared: Prepared, preset: CompressPreset, choose: Choose | None = None
) -> tuple[list[Group], SignalTrainingData]:
    """The lists a `rankstream compress` run of `preset` trains its teacher on, and the data they come from."""
    data = signal_training_data(
        prepared,
        windows=preset.windows,
        days=preset.window_days,
        max_instances=preset.train_instances,
        open_baskets=preset.open_baskets,
        open_target=preset.open_target,
        choose=choose,
    )
    groups = make_groups(
        data.instances,
        prepared.catalog,
        neg_per_instance=preset.neg_per_instance,
        top_negatives=preset.top_negatives,
        signals=data.signals,
    )
    return groups, data
