"""`rankstream merge fit`: a learned merge of co-visitation and text candidates (`stream.retrieval`),
fitted on the train split's last days and checked on the valid split before it is written.

The check is the merge's gate: on the valid baskets its `candidates` must reach at least as many of the
new items users bought as the first `candidates` of the co-visitation pool, or nothing is written and
the scorers keep what they serve.
"""

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rankstream.data.live_instances import Choose
from rankstream.data.prepare import Prepared
from rankstream.evaluation.merge import (
    candidate_recall,
    covisit_orders,
    fit_head,
    merge_chooser,
    merged_orders,
    pooled_baskets,
)
from rankstream.jobs.embed import encoder_vectors
from rankstream.stream.artifact import MANIFEST
from rankstream.stream.encoder import read_encoder_manifest
from rankstream.stream.errors import ConfigError
from rankstream.stream.retrieval import MERGE_FILE, MergeError, MergeHead
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeConfig:
    pool_covisit: int = 200
    pool_text: int = 50
    candidates: int = 50
    fit_days: int = 90  # the train split's last days the head is fitted on


@dataclass(frozen=True)
class MergeReport:
    version: str
    encoder: str
    fit_baskets: int
    valid_baskets: int
    valid_recall_merged: float  # candidate recall@`candidates` of the merge on valid
    valid_recall_covisit: float  # of the co-visitation pool's first `candidates`
    seconds: float


class MergeRefused(ConfigError):
    """The fitted merge reaches fewer valid positives than the co-visitation list it would replace."""


def merge_for_training(data_dir: Path, merge_dir: Path, encoder_dir: Path, n: int = 50) -> tuple[str, Choose]:
    """(version, chooser) of the merge in `merge_dir` over `encoder_dir`'s vectors of the catalog, for
    `compress --merge`: training lists and the gate then hold the candidates a scorer with it serves.

    Raises:
        ConfigError: the merge is unreadable, or was fitted on another encoder's vectors.
    """
    try:
        head = MergeHead.read(merge_dir)
    except MergeError as exc:
        raise ConfigError(f"--merge: {exc}") from exc
    encoder = _encoder_version(encoder_dir)
    if head.encoder != encoder:
        raise ConfigError(f"--merge {merge_dir} was fitted on encoder {head.encoder!r}, --encoder is {encoder!r}")
    catalog = Prepared.load(data_dir).catalog
    embed, _ = encoder_vectors(encoder_dir)
    return head.version, merge_chooser(head, embed(catalog), catalog, n)


def _encoder_version(directory: Path) -> str:
    if (Path(directory) / MANIFEST).exists():
        return read_encoder_manifest(directory).version
    return Path(directory).name


def fit_merge(data_dir: Path, encoder_dir: Path, out_dir: Path, config: MergeConfig = MergeConfig()) -> MergeReport:
    """Fit, check and write `out_dir`/merge.json (see the module doc).

    Raises:
        MergeRefused: the merge does not beat co-visitation on the valid split; nothing is written.
    """
    t0 = time.perf_counter()
    prepared = Prepared.load(data_dir)
    embed, _ = encoder_vectors(encoder_dir)
    vectors = embed(prepared.catalog)
    train = prepared.frame("train")
    start = train["ts"].max() - pd.Timedelta(days=config.fit_days)
    valid_frame = prepared.frame("valid")
    # One walk for both: the fit window's baskets, then valid's, split again by time.
    pooled = pooled_baskets(
        prepared.interactions,
        pd.concat([train[train["ts"] > start], valid_frame]),
        prepared.catalog,
        vectors,
        config.pool_covisit,
        config.pool_text,
    )
    valid_start = valid_frame["ts"].min() if len(valid_frame) else None
    fit = [b for b in pooled if valid_start is None or b.ts < valid_start]
    valid = pooled[len(fit) :]
    version = time.strftime("m%Y%m%d-%H%M%S", time.gmtime())
    encoder = _encoder_version(encoder_dir)
    try:
        head = fit_head(
            fit,
            version=version,
            signal_set=SIGNALS.version,
            encoder=encoder,
            pool_covisit=config.pool_covisit,
            pool_text=config.pool_text,
        )
    except ValueError as exc:  # no eligible basket, or no positive in any pool, in the fit window
        raise MergeRefused(f"{exc}: widen --fit-days (now {config.fit_days}) or bring more history") from exc
    merged = candidate_recall([items for items, _ in merged_orders(head, valid, config.candidates)], valid)
    covisit = candidate_recall(covisit_orders(valid, config.candidates), valid)
    report = MergeReport(version, encoder, len(fit), len(valid), merged, covisit, round(time.perf_counter() - t0, 1))
    if not merged >= covisit:
        raise MergeRefused(
            f"the fitted merge reaches {merged:.4f} of the valid positives with {config.candidates} candidates, "
            f"co-visitation alone {covisit:.4f}: not written (fit baskets: {len(fit)})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (MERGE_FILE + ".tmp")
    tmp.write_text(head.to_json(report=asdict(report), config=asdict(config)))
    tmp.replace(out_dir / MERGE_FILE)  # a scorer starting meanwhile reads the old file or the new, whole
    log.info("merge %s written to %s", version, out_dir / MERGE_FILE)
    return report
