"""Training instances to labelled (history text, candidate text) pairs for a pointwise cross-encoder."""

import logging
import random
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol

from rankstream.stream.features import candidate_text, history_text

log = logging.getLogger(__name__)


class Instance(Protocol):
    """What `make_pairs` reads from a training instance (item ids throughout)."""

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


def make_pairs(
    instances: Iterable[Instance],
    catalog: Mapping[str, str],
    *,
    neg_per_instance: int = 4,
    top_negatives: int | None = None,
    seed: int = 0,
) -> list[LabelledPair]:
    """Every positive (label 1) and up to `neg_per_instance` hard negatives (label 0) per instance.

    Positives come first in candidate order, then positives the candidate generator missed (sorted by
    id): they are still what the user chose. Negatives are candidates that are not positives: the
    `top_negatives` highest-ranked (default half of `neg_per_instance`, rounded up), the rest drawn at
    random from the remaining ones. Items without a catalog title are skipped, and instances left
    without history or positives yield nothing. Same inputs and seed, same pairs in the same order.
    """
    if neg_per_instance < 0:
        raise ValueError(f"neg_per_instance must be >= 0, got {neg_per_instance}")
    n_top = (neg_per_instance + 1) // 2 if top_negatives is None else min(top_negatives, neg_per_instance)
    rng = random.Random(seed)
    out: list[LabelledPair] = []
    skipped = 0
    for inst in instances:
        titles = [catalog[i] for i in inst.history if i in catalog]
        candidates = list(dict.fromkeys(inst.candidates))  # de-duplicated, order kept
        in_list = [c for c in candidates if c in inst.positives and c in catalog]
        missed = sorted(p for p in inst.positives.difference(candidates) if p in catalog)
        if not titles or not (in_list or missed):
            skipped += 1
            continue
        query = history_text(titles)
        negatives = [c for c in candidates if c not in inst.positives and c in catalog]
        chosen = negatives[:n_top]
        rest = negatives[n_top:]
        chosen += rng.sample(rest, min(len(rest), neg_per_instance - len(chosen)))
        out.extend(LabelledPair(query, candidate_text(catalog[p]), 1.0) for p in in_list + missed)
        out.extend(LabelledPair(query, candidate_text(catalog[n]), 0.0) for n in chosen)
    positives = sum(1 for p in out if p.label == 1.0)
    log.info("made %d pairs (%d positive) from instances; %d instances skipped", len(out), positives, skipped)
    return out
