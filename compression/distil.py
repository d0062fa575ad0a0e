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
from rankstream.compression.pairs import LabelledPair, group_signals
from rankstream.compression.train import TRAINING_LOG, apply_step, model_inputs, param_groups, save_trained
from rankstream.stream.errors import JobError
from rankstream.stream.ranker import PairEncoder, Ranker

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


def listwise_loss(logits: torch.Tensor, targets: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Mean over the groups of the cross-entropy between each group's target and softmax(logits / T).

    `logits` holds the groups' pairs one group after another, in the order of `targets`.
    """
    loss, at = torch.zeros(()), 0
    for target in targets:
        n = len(target)
        log_q = torch.log_softmax(logits[at : at + n] / temperature, dim=0)
        loss = loss - (target * log_q).sum()
        at += n
    return loss / len(targets)


def teacher_scores(
    teacher_artifact: Path, groups: Sequence[Group], *, threads: int = 1, cache: Path | None = None
) -> list[np.ndarray]:
    """The teacher artifact's scores for every group, one ONNX Runtime batch per group (as the scorer scores a
    user's list). With `cache`, scores stored there for the same groups are reused, and new ones stored."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        if len(data.files) == len(groups) and all(len(data[f"g{i}"]) == len(g) for i, g in enumerate(groups)):
            log.info("teacher scores: %d groups read from %s", len(groups), cache)
            return [data[f"g{i}"] for i in range(len(groups))]
    ranker = Ranker.load(teacher_artifact, threads=threads)
    scores = []
    for group in tqdm(groups, desc="teacher scores", unit="list"):
        signals = group_signals(group)
        pairs = [(p.query, p.candidate) for p in group]
        scores.append(ranker.score_lists([pairs], None if signals is None else [signals])[0])
    if cache is not None:
        np.savez(cache, **{f"g{i}": s for i, s in enumerate(scores)})
        log.info("teacher scores: %d groups scored, cached at %s", len(groups), cache)
    return scores


def _values(group: Group, teacher_scores: Sequence[np.ndarray] | None, g: int) -> np.ndarray:
    """What group `g` is trained toward: its labels, or the teacher's scores when there are any."""
    return np.array([p.label for p in group]) if teacher_scores is None else np.asarray(teacher_scores[g])


def _batch_order(n_groups: int, steps: int, per_batch: int, seed: int) -> list[list[int]]:
    """The groups of every step, fixed by the seed, so a resumed run continues the same sequence."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * per_batch:
        order.extend(rng.permutation(n_groups).tolist())
    return [order[k * per_batch : (k + 1) * per_batch] for k in range(steps)]


# Long because setup, resume, the step loop and the record share one run's state; split, they would pass it all.
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
        raise JobError(f"{desc}: no training list to learn from; give the job a wider window or more data")
    if teacher_scores is not None and [len(s) for s in teacher_scores] != [len(g) for g in groups]:
        raise JobError(f"{desc}: the teacher's scores do not match the lists; delete the stale score cache and rerun")
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
    optimizer = torch.optim.AdamW(param_groups(model, head_lr=config.head_lr or config.lr), lr=config.lr)
    scheduler = linear_schedule(optimizer, int(config.steps * config.warmup_ratio), config.steps)
    step, seen, seconds, recent = 0, 0, 0.0, []
    if resume:
        state = torch.load(state_file, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, seen, seconds, recent = state["step"], state["seen"], state["seconds"], state["recent"]
        log.info("%s: resuming at step %d of %d from %s", desc, step, config.steps, ckpt)
    batches = _batch_order(len(groups), config.steps, config.groups_per_batch, config.seed)
    n_groups = len(groups)
    log.info(
        "%s: %s on %d groups (%s), %d steps of %d",
        desc,
        base_dir,
        n_groups,
        mode,
        config.steps,
        config.groups_per_batch,
    )
    started = time.perf_counter() - seconds
    with tqdm(total=config.steps, initial=step, desc=desc, unit="step") as bar:
        while step < config.steps:
            chosen = batches[step]
            pairs = [p for g in chosen for p in groups[g]]
            logits = model(**model_inputs(encoder, pairs)).logits.reshape(-1)
            targets = [_targets(_values(groups[g], teacher_scores, g), mode, config.temperature) for g in chosen]
            loss = listwise_loss(logits, targets, config.temperature)
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


def drop_layers(src_dir: Path, out_dir: Path, keep: Sequence[int]) -> Path:
    """Save the cross-encoder `src_dir` keeping only encoder layers `keep` (classifier and prior kept)."""
    model = load_cross_encoder(src_dir)
    layers = model.bert.encoder.layer
    if not keep or any(not 0 <= k < len(layers) for k in keep):
        raise JobError(f"layers {list(keep)} are not a subset of 0..{len(layers) - 1}; fix the preset's students")
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
