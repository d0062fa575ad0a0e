"""Unit-test fixtures: a tiny random-weight BERT and its exported artifacts, built once per session."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Weights come from installed packages; never let a test wait on the unreachable hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# torch is imported inside the fixtures, not here: collecting the unit suite must stay quick for the
# many tests that never touch a model.


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 random-weight BERT checkpoint with the MiniLM tokenizer."""
    from rankstream.compression.build import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", seed=0)


def _export(tmp_path_factory: pytest.TempPathFactory, hf_dir: Path, quantize: str) -> Path:
    from rankstream.compression.export import export_onnx

    root = tmp_path_factory.mktemp(f"artifact-{quantize}")
    return export_onnx(
        hf_dir,
        root / f"v-tiny-{quantize}",
        version=f"v-tiny-{quantize}",
        quantize=quantize,
        method_chain=["finetune:tiny-random-bert"],
        metrics={"ndcg@10": 0.5},
    )


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    return _export(tmp_path_factory, tiny_bert_dir, "none")


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    return _export(tmp_path_factory, tiny_bert_dir, "int8")


@pytest.fixture
def artifact_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Factory: a private copy of a session artifact that a test may tamper with."""

    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy
