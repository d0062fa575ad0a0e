"""Structured pruning of FFN neurons by importance (FastFormers-style), before a re-distillation.

Importance of a neuron = |sum over a few distillation batches of grad x weight| over its input row and
output column (first-order Taylor estimate of the loss change when it is removed). Every layer keeps
the same number of neurons, so the config stays a plain BERT and ORT's fusions still apply.
Attention heads are not pruned: a per-layer head count breaks the fused Attention op's fixed shape.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rankstream.compression.distil import Group, _targets, listwise_loss
from rankstream.compression.model import load_cross_encoder, save_tokenizer
from rankstream.compression.train import model_inputs
from rankstream.stream.errors import JobError
from rankstream.stream.ranker import PairEncoder

log = logging.getLogger(__name__)


def ffn_terms(layers: Sequence[torch.nn.Module]) -> list[torch.Tensor]:
    """After a backward pass: each layer's |grad x weight| per FFN neuron (input row, bias, output column)."""
    terms = []
    for layer in layers:
        w1, b1, w2 = layer.intermediate.dense.weight, layer.intermediate.dense.bias, layer.output.dense.weight
        terms.append(((w1.grad * w1).sum(dim=1) + b1.grad * b1 + (w2.grad * w2).sum(dim=0)).abs().detach())
    return terms


def cut_ffn(layers: Sequence[torch.nn.Module], importance: Sequence[torch.Tensor], keep: int) -> None:
    """Cut every layer's FFN, in place, to its `keep` most important neurons (kept in their order)."""
    with torch.no_grad():
        for imp, layer in zip(importance, layers, strict=True):
            idx = torch.sort(torch.topk(imp, keep).indices).values
            inter, out = layer.intermediate.dense, layer.output.dense
            new_inter = torch.nn.Linear(inter.in_features, keep)
            new_inter.weight.copy_(inter.weight[idx])
            new_inter.bias.copy_(inter.bias[idx])
            new_out = torch.nn.Linear(keep, out.out_features)
            new_out.weight.copy_(out.weight[:, idx])
            new_out.bias.copy_(out.bias)
            layer.intermediate.dense, layer.output.dense = new_inter, new_out


def kept_neurons(size: int, keep_ratio: float) -> int:
    """Neurons per layer left by `keep_ratio` of `size`; JobError outside (0, 1]."""
    if not 0.0 < keep_ratio <= 1.0:
        raise JobError(f"an FFN keep ratio must be in (0, 1], got {keep_ratio}")
    return max(1, round(size * keep_ratio))


def ffn_importance(
    model: torch.nn.Module,
    encoder: PairEncoder,
    groups: Sequence[Group],
    teacher_scores: Sequence[np.ndarray],
    *,
    batches: int = 16,
    groups_per_batch: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """One importance vector (intermediate_size) per encoder layer, from the listwise distillation loss."""
    model.train()
    layers = model.bert.encoder.layer  # type: ignore[union-attr]
    scores = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        chosen = rng.choice(len(groups), size=min(groups_per_batch, len(groups)), replace=False).tolist()
        pairs = [p for g in chosen for p in groups[g]]
        logits = model(**model_inputs(encoder, pairs)).logits.reshape(-1)
        loss = listwise_loss(logits, [_targets(teacher_scores[g], "scores", 1.0) for g in chosen])
        model.zero_grad(set_to_none=True)
        loss.backward()
        for s, term in zip(scores, ffn_terms(layers), strict=True):
            s += term
    model.zero_grad(set_to_none=True)
    return scores


def prune_ffn(
    src_dir: Path,
    out_dir: Path,
    groups: Sequence[Group],
    teacher_scores: Sequence[np.ndarray],
    *,
    keep_ratio: float,
    max_length: int = 64,
    batches: int = 16,
) -> Path:
    """Save `src_dir` with each layer's FFN cut to its `keep_ratio` most important neurons."""
    torch.manual_seed(0)
    model = load_cross_encoder(src_dir)
    encoder = PairEncoder(Path(src_dir) / "tokenizer.json", max_length)
    size = model.config.intermediate_size
    keep = kept_neurons(size, keep_ratio)
    importance = ffn_importance(model, encoder, groups, teacher_scores, batches=batches)
    cut_ffn(model.bert.encoder.layer, importance, keep)
    model.config.intermediate_size = keep
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    save_tokenizer(src_dir, out_dir)
    log.info("pruned FFN %d -> %d neurons per layer (%s)", size, keep, src_dir)
    return out_dir
