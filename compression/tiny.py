"""One model build: fine-tune -> export -> artifact directory `out_root/version`."""

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from rankstream.compression.export import export_onnx
from rankstream.compression.model import with_position_prior
from rankstream.compression.pairs import LabelledPair
from rankstream.compression.signal_head import SignalHead
from rankstream.compression.train import TRAINING_LOG, fine_tune, minilm_path

log = logging.getLogger(__name__)

Preset = Literal["demo", "tiny"]


@dataclass(frozen=True)
class _Recipe:
    max_steps: int
    max_epochs: int
    batch_size: int
    lr: float
    max_length: int
    chain: str
    parent: str | None


# demo: few enough steps that a quick model builds on a small CPU machine while someone waits (its speed
# and duration are in docs/results.md). Short and honest, not converged.
RECIPES: dict[str, _Recipe] = {
    "demo": _Recipe(
        max_steps=300,
        max_epochs=3,
        batch_size=32,
        lr=5e-5,
        max_length=64,
        chain="finetune:minilm-l6",
        parent="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "tiny": _Recipe(
        max_steps=8, max_epochs=3, batch_size=16, lr=1e-3, max_length=64, chain="finetune:tiny-random-bert", parent=None
    ),
}


def _tiny(out_dir: Path, seed: int, config_cls: Any, model_cls: Any, **config: Any) -> Path:
    """A random-weight classifier of `model_cls` (hidden 32, 2 heads) with the MiniLM tokenizer.

    Initialised 10x wider than BERT's default, so that its scores differ between pairs (by ~0.1-1)
    and score comparisons in tests mean something; at 0.02 every pair scores the same to 3 decimals.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    cfg = config_cls(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,  # BERT's default already; MPNet's would be 1
        num_labels=1,
        initializer_range=0.2,
        **config,
    )
    model_cls(cfg).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_bert(out_dir: Path, *, seed: int = 0, num_layers: int = 2) -> Path:
    """A random-weight BERT (default 2 layers) for fast tests."""
    return _tiny(
        out_dir,
        seed,
        BertConfig,
        BertForSequenceClassification,
        num_hidden_layers=num_layers,
        max_position_embeddings=128,
    )


def tiny_mpnet(out_dir: Path, *, seed: int = 0, num_layers: int = 4) -> Path:
    """A random-weight MPNet: the tiny stand-in for the all-mpnet-base-v2 teacher, so tests run the path
    where teacher and students differ in architecture."""
    return _tiny(
        out_dir,
        seed,
        MPNetConfig,
        MPNetForSequenceClassification,
        num_hidden_layers=num_layers,
        max_position_embeddings=130,  # MPNet's positions start after the pad id
    )


def build_model(
    pairs_train: Sequence[LabelledPair],
    out_root: Path,
    *,
    version: str,
    preset: Preset = "demo",
    metrics: Mapping[str, float] | None = None,
    quantize: Literal["none", "int8"] = "int8",
    seed: int = 0,
    prior: Sequence[float] = (),
    head: SignalHead | None = None,
) -> Path:
    """Fine-tune per `preset`, export, and return the artifact directory `out_root/version`.

    Training runs the preset's `max_steps`, repeating the pairs for up to `max_epochs` passes when
    there are few of them. The fine-tuned checkpoint lives in a temporary folder and is discarded once
    exported. Training throughput and loss join `metrics` as `train_*`. With `head` (the pairs then carry
    signals) the model starts as the linear scorer `head` + position `prior` (compression/model.py).
    """
    recipe = RECIPES[preset]
    chain = recipe.chain
    with tempfile.TemporaryDirectory(prefix=f"rankstream-build-{version}-") as tmp:
        base = tiny_bert(Path(tmp) / "base", seed=seed) if preset == "tiny" else minilm_path()
        if head is not None or prior:
            base = with_position_prior(base, Path(tmp) / "init", prior, max_length=recipe.max_length, head=head)
            chain += "+position-prior" + (f"+signal-head:{head.version}" if head is not None else "")
        epochs = min(recipe.max_epochs, math.ceil(recipe.max_steps * recipe.batch_size / len(pairs_train)))
        checkpoint = fine_tune(
            pairs_train,
            base,
            Path(tmp) / "finetuned",
            epochs=epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            max_length=recipe.max_length,
            max_steps=recipe.max_steps,
            seed=seed,
        )
        training = json.loads((checkpoint / TRAINING_LOG).read_text())
        all_metrics = dict(metrics or {}) | {f"train_{k}": float(v) for k, v in training.items()}
        artifact = export_onnx(
            checkpoint,
            Path(out_root) / version,
            version=version,
            quantize=quantize,
            max_length=recipe.max_length,
            parent=recipe.parent,
            method_chain=[chain],
            metrics=all_metrics,
        )
    log.info("built %s (%s preset) at %s", version, preset, artifact)
    return artifact
