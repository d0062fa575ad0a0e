"""`rankstream embed`: pairs from the train split only, the gate's refusal with the figures kept, and the
vectors `eval --encoder` reads from a model folder or an artifact."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankstream.compression.biencoder import FitConfig, FitRecord
from rankstream.data.covisit import covisit_weights
from rankstream.data.prepare import Prepared
from rankstream.jobs.embed import REPORT, EmbedConfig, EmbedJob, OnnxSpeed, Recall, Speed, encoder_vectors
from rankstream.stream.errors import ConfigError, JobError
from tests.model_builders import tiny_prepared


def _linked(frame: pd.DataFrame) -> set[frozenset[str]]:
    w = covisit_weights(frame)
    return {frozenset((w.item_ids[i], w.item_ids[j])) for i, j in zip(w.i, w.j, strict=True)}


def test_pairs_come_from_the_train_split_only(tmp_path: Path) -> None:
    data = tiny_prepared(tmp_path)
    prepared = Prepared.load(data)
    pairs = EmbedJob(data, tmp_path / "out", EmbedConfig(steps=1)).pairs()
    found = {frozenset((p.a, p.b)) for p in pairs}
    assert found and found <= _linked(prepared.frame("train"))
    later = pd.concat([prepared.frame("valid"), prepared.frame("test")], ignore_index=True)
    later_only = _linked(later) - _linked(prepared.frame("train"))
    assert later_only and not (found & later_only)
    assert all(p.a != p.b for p in pairs)


def _record(steps: int) -> FitRecord:
    return FitRecord(steps, 2, 10, steps * 64, 1.0, 64.0, 4.0, 3.0, FitConfig(steps=steps))


def test_the_job_refuses_a_student_below_097_of_the_teacher_and_keeps_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = EmbedJob(tiny_prepared(tmp_path), tmp_path / "out", EmbedConfig(steps=2))
    monkeypatch.setattr(job, "pairs", lambda: ["a pair"])
    monkeypatch.setattr(job, "teacher", lambda pairs: _record(2))
    monkeypatch.setattr(job, "student", lambda pairs: _record(2))
    monkeypatch.setattr(job, "export", lambda: (tmp_path / "student", tmp_path / "teacher"))
    monkeypatch.setattr(job, "recall", lambda artifact: Recall(10, 0.10, 0.099, 0.0969))
    monkeypatch.setattr(job, "speed", lambda a, b: Speed(5, 1.0, 2.0, (OnnxSpeed(1, 1.0, 3.0, 3.0, 2.9, 3.1),)))
    with pytest.raises(JobError, match="below 0.97"):
        job.run()
    assert '"passed": false' in (tmp_path / "out" / REPORT).read_text()

    monkeypatch.setattr(job, "recall", lambda artifact: Recall(10, 0.10, 0.099, 0.098))
    assert job.run().gate.passed


def test_config_is_checked_when_built() -> None:
    with pytest.raises(ConfigError):
        EmbedConfig(steps=0)
    with pytest.raises(ConfigError):
        EmbedConfig(steps=10, student_layers=7)
    with pytest.raises(ConfigError):
        EmbedConfig(steps=10, snapshots=(10,))
    for share in (0.0, -0.5, 1.01):
        with pytest.raises(ConfigError, match="student-ffn"):
            EmbedConfig(steps=10, student_ffn=share)
    assert EmbedConfig(steps=10).student_name == "student-l2-int8"
    assert EmbedConfig(steps=10, student_layers=1, student_ffn=0.5).student_name == "student-l1-ffn50-int8"


def test_encoder_vectors_read_a_model_folder_or_an_artifact_and_say_which(
    tiny_encoder_dir: Path, encoder_int8_artifact: Path, tmp_path: Path
) -> None:
    catalog = {"i1": "red heart", "i2": "blue bag", "i3": "red heart"}
    embed, label = encoder_vectors(tiny_encoder_dir)
    vectors = embed(catalog)
    assert "Hugging Face model" in label and vectors.ids == ("i1", "i2", "i3")
    np.testing.assert_allclose(np.linalg.norm(vectors.matrix, axis=1), 1.0, rtol=1e-5)
    embed, label = encoder_vectors(encoder_int8_artifact)
    assert "ONNX artifact e-tiny-int8" in label and embed(catalog).matrix.shape == (3, 32)
    with pytest.raises(ConfigError):
        encoder_vectors(tmp_path)
