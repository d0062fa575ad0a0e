"""Item vectors from a pretrained sentence encoder, with no training: each catalog title through
all-MiniLM-L6-v2 (the installed copy), mean-pooled over its tokens and L2-normalised, as
sentence-transformers computes this model's embeddings (its modules: Transformer, mean Pooling, Normalize).

The vectors are what the evaluation's text neighbours read (`rankstream.evaluation.text`); they are
made here because making them needs torch, which nothing outside this folder imports.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from rankstream.compression.train import minilm_path

log = logging.getLogger(__name__)

# The model's sentence_bert_config.json; catalog titles are far shorter, so it never truncates them.
MAX_LENGTH = 256
BATCH_SIZE = 128


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's token states over its real tokens (padding left out), L2-normalised."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(dim=1)
    pooled = summed / m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embed_texts(texts: Sequence[str], model_dir: Path | None = None, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """[len(texts), hidden] float32 unit vectors of `texts`, from the encoder in `model_dir` (default:
    the installed all-MiniLM-L6-v2), on CPU.

    Batches follow the input order, so the same texts give the same vectors on every run (a length-sorted
    batching would change each text's padding, and with it the last bits of its vector).
    """
    path = model_dir or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).numpy())
    width = model.config.hidden_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, width), np.float32)


def item_vectors(
    catalog: Mapping[str, str], model_dir: Path | None = None, *, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, list[str]]:
    """Every catalog item's title embedded: (the [items, hidden] float32 matrix, the item ids of its rows,
    in the catalog's order)."""
    ids = list(catalog)
    t0 = time.perf_counter()
    matrix = embed_texts([catalog[i] for i in ids], model_dir, batch_size=batch_size)
    log.info("embedded %d titles in %.1f s", len(ids), time.perf_counter() - t0)
    return matrix, ids
