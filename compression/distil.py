"""Listwise training over each instance's candidate list: from labels (a teacher) or from a teacher's
scores (a student, listwise KL). Checkpointed every few steps and resumable after a kill.
"""

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup as linear_schedule

from rankstream.compression.model import load_cross_encoder, save_tokenizer
from rankstream.compression.pairs import LabelledPair
from rankstream.compression.train import TRAINING_LOG, apply_step, model_inputs, save_trained
from rankstream.stream.ranker import PairEncoder

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
Group = Sequence[LabelledPair]


@dataclass(frozen=True)
class TrainConfig:
    """One listwise training run. `groups_per_batch` instance lists make one optimizer step."""

    steps: int
    groups_per_batch: int = 2
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    max_length: int = 64
    temperature: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 2
    # Learning rate of the scalar layers on top (classifier, position bias, signal head); None: `lr`.
    # The classifier starts at zero when a signal head is fitted first, and at BERT's fine-tuning rate
    # it barely leaves zero in a few hundred steps.
    head_lr: float | None = None


def _targets(values: np.ndarray, mode: Literal["labels", "scores"], temperature: float) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    if mode == "labels":
        return t / t.sum().clamp(min=1e-9)  # uniform over the positives
    return torch.softmax(t / temperature, dim=0)


def _batch_order(n_groups: int, steps: int, per_batch: int, seed: int) -> list[list[int]]:
    """The groups of every step, fixed by the seed, so a resumed run continues the same sequence."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * per_batch:
        order.extend(rng.permutation(n_groups).tolist())
    return [order[k * per_batch : (k + 1) * per_batch] for k in range(steps)]


def train_listwise(
    base_dir: Path,
    out_dir: Path,
    groups: Sequence[Group],
    config: TrainConfig,
    *,
    teacher_scores: Sequence[np.ndarray] | None = None,
    desc: str = "train",
) -> Path:
    """Train `base_dir` on `groups` with a softmax cross-entropy over each group; save to `out_dir`.

    Without `teacher_scores` the target of a group is uniform over its positives (labels); with them it
    is softmax(teacher / T) (listwise distillation, which only needs the teacher's scores, so teacher and
    student may use different tokenizers). A finished `out_dir` (training.json present) is returned as
    is; a killed run resumes from `out_dir/checkpoint` with the same batch sequence.
    """
    out_dir = Path(out_dir)
    if (out_dir / TRAINING_LOG).exists():
        log.info("%s: already trained at %s, reusing it", desc, out_dir)
        return out_dir
    if not groups:
        raise ValueError("train_listwise needs at least one group")
    if teacher_scores is not None and [len(s) for s in teacher_scores] != [len(g) for g in groups]:
        raise ValueError("teacher_scores must have one score per pair of every group")
    mode: Literal["labels", "scores"] = "labels" if teacher_scores is None else "scores"
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    ckpt = out_dir / CHECKPOINT
    state_file = ckpt / "state.pt"
    resume = state_file.exists()
    source = ckpt if resume else Path(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(base_dir, out_dir)
    encoder = PairEncoder(out_dir / "tokenizer.json", config.max_length)
    model = load_cross_encoder(source)
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    top = ("classifier.", "position_bias.", "signal_")
    named = list(model.named_parameters())
    body = [(n, p) for n, p in named if not n.startswith(top)]
    head = [p for n, p in named if n.startswith(top)]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in body if not n.endswith(no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in body if n.endswith(no_decay)], "weight_decay": 0.0},
            {"params": head, "weight_decay": 0.0, "lr": config.head_lr or config.lr},
        ],
        lr=config.lr,
    )
    scheduler = linear_schedule(optimizer, int(config.steps * config.warmup_ratio), config.steps)
    step, seen, seconds, recent = 0, 0, 0.0, []
    if resume:
        state = torch.load(state_file, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, seen, seconds, recent = state["step"], state["seen"], state["seconds"], state["recent"]
        log.info("%s: resuming at step %d of %d from %s", desc, step, config.steps, ckpt)
    batches = _batch_order(len(groups), config.steps, config.groups_per_batch, config.seed)
    log.info(
        "%s: %s on %d groups (%s), %d steps of %d groups", desc, base_dir, len(groups), mode, config.steps,
        config.groups_per_batch,
    )  # fmt: skip
    started = time.perf_counter() - seconds
    with tqdm(total=config.steps, initial=step, desc=desc, unit="step") as bar:
        while step < config.steps:
            chosen = batches[step]
            pairs = [p for g in chosen for p in groups[g]]
            logits = model(**model_inputs(encoder, pairs)).logits.reshape(-1)
            loss = torch.zeros(())
            at = 0
            for g in chosen:
                n = len(groups[g])
                values = np.array([p.label for p in groups[g]]) if teacher_scores is None else teacher_scores[g]
                target = _targets(values, mode, config.temperature)
                log_q = torch.log_softmax(logits[at : at + n] / config.temperature, dim=0)
                loss = loss - (target * log_q).sum()
                at += n
            loss = loss / len(chosen)
            apply_step(loss, model, optimizer, scheduler)
            step += 1
            seen += len(pairs)
            recent = (recent + [loss.item()])[-20:]
            bar.update(1)
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if step % config.checkpoint_every == 0 and step < config.steps:
                _checkpoint(model, optimizer, scheduler, ckpt, step, seen, time.perf_counter() - started, recent)
    seconds = time.perf_counter() - started
    stats = save_trained(
        model,
        out_dir,
        step=step,
        seen=seen,
        seconds=seconds,
        recent=recent,
        params=sum(p.numel() for p in model.parameters()),
        mode=mode,
        config=asdict(config),
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info(
        "%s: %d steps in %.0fs (%.1f pairs/s), loss %.4f",
        desc,
        step,
        seconds,
        stats["pairs_per_s"],
        stats["final_loss"],
    )
    return out_dir


def _checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
    ckpt: Path,
    step: int,
    seen: int,
    seconds: float,
    recent: list[float],
) -> None:
    tmp = ckpt.with_name(CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # type: ignore[operator]
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),  # type: ignore[attr-defined]
        "step": step,
        "seen": seen,
        "seconds": seconds,
        "recent": recent,
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)  # a kill leaves either the old checkpoint or the new one, never half of one


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `n_layers`, always the first and the last (6, 4 -> 0, 2, 3, 5)."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"keep must be in 1..{n_layers}, got {keep}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def drop_layers(src_dir: Path, out_dir: Path, keep: Sequence[int]) -> Path:
    """Save the cross-encoder `src_dir` keeping only encoder layers `keep` (classifier and prior kept)."""
    model = load_cross_encoder(src_dir)
    layers = model.bert.encoder.layer
    if not keep or any(not 0 <= k < len(layers) for k in keep):
        raise ValueError(f"layers {list(keep)} are not a subset of 0..{len(layers) - 1}")
    model.bert.encoder.layer = torch.nn.ModuleList([layers[k] for k in keep])
    model.config.num_hidden_layers = len(keep)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    save_tokenizer(src_dir, out_dir)
    log.info("kept layers %s of %d from %s", list(keep), len(layers), src_dir)
    return out_dir


def count_params(hf_dir: Path) -> int:
    """Parameters of a saved cross-encoder (embeddings included)."""
    model = load_cross_encoder(hf_dir)
    return sum(p.numel() for p in model.parameters())
