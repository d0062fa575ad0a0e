"""`rankstream merge fit`: the head it writes is the one a scorer reads, and a merge that reaches fewer
valid positives than co-visitation is refused with nothing written."""

from pathlib import Path

import numpy as np
import pytest

import rankstream.jobs.merge as job
from rankstream.jobs.merge import MergeConfig, MergeRefused, fit_merge
from rankstream.stream.retrieval import MERGE_FILE, MergeHead
from rankstream.stream.signals import SIGNALS
from tests.model_builders import tiny_prepared

CONFIG = MergeConfig(pool_covisit=20, pool_text=5, candidates=10, fit_days=365)


def test_the_written_head_is_read_back_whole(tmp_path: Path, encoder_int8_artifact: Path) -> None:
    # A merge that keeps every pooled item reaches what co-visitation reaches: it passes, and is written.
    config = MergeConfig(pool_covisit=20, pool_text=0, candidates=20, fit_days=365)
    data = tiny_prepared(tmp_path)
    out = tmp_path / "merge"
    report = fit_merge(data, encoder_int8_artifact, out, config)
    head = MergeHead.read(out)
    assert (head.version, head.pool_covisit, head.pool_text) == (report.version, 20, 0)
    assert head.signal_set == SIGNALS.version and head.encoder == report.encoder != ""
    assert report.fit_baskets > 0 and report.valid_baskets > 0
    assert report.valid_recall_merged == pytest.approx(report.valid_recall_covisit)
    assert report.valid_recall_covisit > 0
    assert np.isfinite(head.weight).all() and head.weight.any()


def test_a_merge_below_covisitation_is_refused_and_not_written(
    tmp_path: Path, encoder_int8_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_prepared(tmp_path)
    out = tmp_path / "merge"
    figures = iter([0.10, 0.20])  # the merge's valid recall, then co-visitation's
    monkeypatch.setattr(job, "candidate_recall", lambda orders, baskets: next(figures))
    with pytest.raises(MergeRefused, match="reaches 0.1000 .* co-visitation alone 0.2000"):
        fit_merge(data, encoder_int8_artifact, out, CONFIG)
    assert not (out / MERGE_FILE).exists()
