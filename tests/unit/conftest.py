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
    from rankstream.compression.tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", seed=0)


@pytest.fixture(scope="session")
def signal_bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """The tiny BERT with a position prior and a signal head, its random classifier kept (text counts too)."""
    import torch

    from rankstream.compression.model import load_cross_encoder, with_position_prior
    from rankstream.compression.signal_head import SignalHead
    from rankstream.stream.signals import SIGNALS

    n = len(SIGNALS.names)
    head = SignalHead(
        SIGNALS.version,
        SIGNALS.names,
        mean=tuple(-1.0 + 0.3 * i for i in range(n)),
        scale=tuple(0.5 + 0.2 * i for i in range(n)),
        weight=tuple((-1) ** i * (0.2 + 0.1 * i) for i in range(n)),
        prior_weight=0.5,
    )
    out = with_position_prior(
        tiny_bert_dir, tmp_path_factory.mktemp("signal-bert") / "model", [0.4, -0.2, 0.1], head=head
    )
    model = load_cross_encoder(out)
    text = load_cross_encoder(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.weight.copy_(text.classifier.weight)
        model.classifier.bias.copy_(text.classifier.bias)
    model.save_pretrained(out)
    return out


def _export(tmp_path_factory: pytest.TempPathFactory, hf_dir: Path, quantize: str, name: str = "tiny") -> Path:
    from rankstream.compression.export import export_onnx

    root = tmp_path_factory.mktemp(f"artifact-{name}-{quantize}")
    return export_onnx(
        hf_dir,
        root / f"v-{name}-{quantize}",
        version=f"v-{name}-{quantize}",
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


@pytest.fixture(scope="session")
def signal_fp32_artifact(tmp_path_factory: pytest.TempPathFactory, signal_bert_dir: Path) -> Path:
    return _export(tmp_path_factory, signal_bert_dir, "none", "signals")


@pytest.fixture(scope="session")
def signal_int8_artifact(tmp_path_factory: pytest.TempPathFactory, signal_bert_dir: Path) -> Path:
    return _export(tmp_path_factory, signal_bert_dir, "int8", "signals")


@pytest.fixture
def artifact_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Factory: a private copy of a session artifact that a test may tamper with."""

    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 random-weight BertModel (a bi-encoder, no classifier) with the MiniLM tokenizer."""
    from rankstream.compression.tiny import tiny_encoder

    return tiny_encoder(tmp_path_factory.mktemp("tiny-encoder") / "model", seed=0)


def _export_encoder(tmp_path_factory: pytest.TempPathFactory, hf_dir: Path, quantize: str) -> Path:
    from rankstream.compression.encoder_export import REFERENCE_TITLES, export_encoder

    root = tmp_path_factory.mktemp(f"encoder-{quantize}")
    return export_encoder(
        hf_dir,
        root / f"e-tiny-{quantize}",
        quantize=quantize,
        reference_titles=REFERENCE_TITLES,
        version=f"e-tiny-{quantize}",
        method_chain=["random-init:tiny-bert"],
        metrics={"recall@50": 0.25},
    )


@pytest.fixture(scope="session")
def encoder_fp32_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    return _export_encoder(tmp_path_factory, tiny_encoder_dir, "none")


@pytest.fixture(scope="session")
def encoder_int8_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    return _export_encoder(tmp_path_factory, tiny_encoder_dir, "int8")
