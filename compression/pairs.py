"""Training instances to labelled (history text, candidate text) pairs, each with its candidate's serve-time
signals when the caller provides them (one `candidate_signals` matrix per instance)."""

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from rankstream.stream.candidates import in_catalog
from rankstream.stream.errors import JobError
from rankstream.stream.features import candidate_text, history_text

log = logging.getLogger(__name__)


class Instance(Protocol):
    """What `make_groups` reads from a training instance (item ids throughout)."""

    @property
    def history(self) -> tuple[str, ...]: ...  # newest first
    @property
    def candidates(self) -> tuple[str, ...]: ...  # best first, as the candidate generator ranked them
    @property
    def positives(self) -> frozenset[str]: ...


class LabelledPair(NamedTuple):
    query: str
    candidate: str
    label: float  # 1.0 positive, 0.0 negative
    signals: tuple[float, ...] = ()  # the candidate's row of stream.signals.SIGNALS; empty for text only


def group_signals(group: Sequence[LabelledPair]) -> np.ndarray | None:
    """float32 [len(group), F] of the pairs' signals, or None when the pairs carry none."""
    if not group or not group[0].signals:
        return None
    return np.asarray([p.signals for p in group], dtype=np.float32)


def make_groups(
    instances: Iterable[Instance],
    catalog: Mapping[str, str],
    *,
    neg_per_instance: int = 4,
    top_negatives: int | None = None,
    seed: int = 0,
    signals: Sequence[np.ndarray] | None = None,
) -> list[list[LabelledPair]]:
    """One list per instance, the unit of listwise training: every positive (label 1) first, then up to
    `neg_per_instance` negatives (label 0).

    Positives are the chosen items that the candidate generator proposed, in candidate order; chosen
    items it missed are left out, because the pair text carries the candidate's co-visitation position
    and a missed item has none (the scorer never sees such a pair). Negatives are candidates that are
    not positives: the `top_negatives` highest-ranked (default half of `neg_per_instance`, rounded up),
    the rest drawn at random from the remaining ones. Items without a catalog title are skipped, as the
    scorer skips them, and instances left without history or positives yield nothing. Same inputs and
    seed, same pairs in the same order. `signals` (one `candidate_signals` matrix per instance, rows in
    the scorer's candidate order) puts each candidate's row on its pair.
    """
    if neg_per_instance < 0:
        raise JobError(f"neg_per_instance must be >= 0, got {neg_per_instance}; fix the preset")
    n_top = (neg_per_instance + 1) // 2 if top_negatives is None else min(top_negatives, neg_per_instance)
    rng = random.Random(seed)
    out: list[list[LabelledPair]] = []
    skipped = 0
    instances = list(instances)
    if signals is not None and len(signals) != len(instances):
        raise ValueError(f"{len(signals)} signal matrices for {len(instances)} instances")
    for k, inst in enumerate(instances):
        titles = [catalog[i] for i in inst.history if i in catalog]
        ranked = in_catalog(inst.candidates, catalog)  # positions as the scorer numbers them
        positives = [r for r, c in enumerate(ranked) if c in inst.positives]
        if not titles or not positives:
            skipped += 1
            continue
        query = history_text(titles)
        negatives = [r for r, c in enumerate(ranked) if c not in inst.positives]
        chosen = negatives[:n_top]
        rest = negatives[n_top:]
        chosen += rng.sample(rest, min(len(rest), neg_per_instance - len(chosen)))
        rows: list[tuple[float, ...]] = [()] * len(ranked)
        if signals is not None:
            if len(signals[k]) != len(ranked):
                raise ValueError(f"instance {k}: {len(signals[k])} signal rows for {len(ranked)} candidates")
            rows = [tuple(float(v) for v in row) for row in signals[k]]
        out.append(
            [LabelledPair(query, candidate_text(catalog[ranked[r]], r), 1.0, rows[r]) for r in positives]
            + [LabelledPair(query, candidate_text(catalog[ranked[r]], r), 0.0, rows[r]) for r in chosen]
        )
    n_pairs = sum(len(g) for g in out)
    n_pos = sum(1 for g in out for p in g if p.label == 1.0)
    log.info("made %d pairs (%d positive) in %d groups; %d instances skipped", n_pairs, n_pos, len(out), skipped)
    return out
