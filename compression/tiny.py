"""Random-weight tiny cross-encoders (BERT, MPNet) and a tiny bi-encoder with the MiniLM tokenizer: the
`tiny` preset's teacher and students, and the models of fast tests."""

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from rankstream.compression.train import minilm_path


def _tiny(out_dir: Path, seed: int, config_cls: Any, model_cls: Any, **config: Any) -> Path:
    """A random-weight classifier of `model_cls` (hidden 32, 2 heads) with the MiniLM tokenizer.

    Initialised wider than BERT's default, so that its scores differ between pairs and score comparisons
    in tests mean something; at BERT's default every pair scores about the same.
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


def tiny_encoder(out_dir: Path, *, seed: int = 0, num_layers: int = 2) -> Path:
    """A random-weight BertModel (no classifier; default 2 layers): the bi-encoder of fast tests."""
    return _tiny(out_dir, seed, BertConfig, BertModel, num_hidden_layers=num_layers, max_position_embeddings=128)
