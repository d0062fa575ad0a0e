"""A bi-encoder fitted to co-purchase: title vectors whose cosine says "bought together".

The teacher is all-MiniLM-L6-v2 fine-tuned on co-purchased title pairs with in-batch negatives (the
symmetric form of sentence-transformers' MultipleNegativesRankingLoss); the student keeps a few of its
layers and learns the teacher's vector of every catalog title plus the same pair loss. Both embed as
`rankstream.compression.embed` does (mean over real tokens, L2-normalised), so `embed_texts` reads
either directory. Saved as Hugging Face model directories; ONNX export is `encoder_export`'s.
"""

import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import get_linear_schedule_with_warmup as linear_schedule

from rankstream.compression.embed import mean_pool
from rankstream.compression.prune import cut_ffn, ffn_terms, kept_neurons
from rankstream.compression.train import NO_DECAY
from rankstream.stream.errors import ConfigError, JobError

log = logging.getLogger(__name__)

FIT_RECORD = "training.json"
# The student's retrieval recall must keep this share of the teacher's.
MIN_RECALL_RATIO = 0.97


class Pair(Protocol):
    """Two co-purchased items and their titles (`rankstream.data.copurchase.TitlePair` is one)."""

    @property
    def a(self) -> str: ...
    @property
    def b(self) -> str: ...
    @property
    def title_a(self) -> str: ...
    @property
    def title_b(self) -> str: ...


@dataclass(frozen=True)
class FitConfig:
    """One bi-encoder training run: `steps` batches of `batch_size` pairs."""

    steps: int
    batch_size: int = 64
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    # Cosines times `scale` are the logits: sentence-transformers' default, so that a cosine gap of a
    # few tenths is a confident softmax.
    scale: float = 20.0
    # Titles run to about a dozen word pieces; 32 cuts none of them and keeps padding short.
    max_length: int = 32
    # Weight of the distillation term beside the pair loss (a student only).
    distil_weight: float = 1.0
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class FitRecord:
    """What one training run did; written next to the weights as training.json (this class owns the file)."""

    steps: int
    layers: int
    params: int
    pairs_seen: int
    seconds: float
    pairs_per_s: float
    first_loss: float
    final_loss: float
    config: FitConfig

    def write(self, out_dir: Path) -> None:
        (Path(out_dir) / FIT_RECORD).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, out_dir: Path) -> "FitRecord":
        raw = json.loads((Path(out_dir) / FIT_RECORD).read_text())
        return cls(**{**raw, "config": FitConfig(**raw["config"])})


def load(model_dir: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and encoder (no head) saved in `model_dir`."""
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir)


def embed(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> torch.Tensor:
    """[len(texts), hidden] unit vectors, gradients kept."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


def in_batch_loss(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric in-batch-negatives cross-entropy: row k of `a` must pick row k of `b` among all rows of
    `b`, and the other way round (unit rows, so `a @ b.T` holds cosines)."""
    logits = scale * a @ b.T
    labels = torch.arange(len(a))
    forward = torch.nn.functional.cross_entropy(logits, labels)
    backward = torch.nn.functional.cross_entropy(logits.T, labels)
    return (forward + backward) / 2


def pair_batches(pairs: Sequence[Pair], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of pair indices, epochs in seeded random orders.

    A pair whose item or title is already in the batch waits for the next one: in the batch it would be
    a negative that is really a positive. After a batch's worth of such skips the rest go in anyway, so
    a small or lopsided pair set still fills every batch.
    """
    if not pairs:
        raise JobError("no co-purchased pairs to train on; the train split has no basket with two titled items")
    source = _epochs(len(pairs), np.random.default_rng(seed))
    waiting: deque[int] = deque()
    out = []
    for _ in range(steps):
        batch: list[int] = []
        taken: set[str] = set()
        skipped: list[int] = []
        while len(batch) < batch_size:
            k = waiting.popleft() if waiting else next(source)
            p = pairs[k]
            keys = (p.a, p.b, p.title_a, p.title_b)
            if taken.isdisjoint(keys) or len(skipped) >= batch_size:
                batch.append(k)
                taken.update(keys)
            else:
                skipped.append(k)
        waiting.extendleft(reversed(skipped))
        out.append(batch)
    return out


def _epochs(n: int, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from (int(k) for k in rng.permutation(n))


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `n_layers`, the first and the last always among them (6, 2 -> 0, 5)."""
    if not 1 <= keep <= n_layers:
        raise ConfigError(f"a student keeps 1 to {n_layers} layers, got {keep}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def drop_layers(src_dir: Path, out_dir: Path, keep: Sequence[int]) -> Path:
    """Save the encoder `src_dir` with only its layers `keep` (embeddings kept), tokenizer beside it."""
    tokenizer, model = load(src_dir)
    layers = model.encoder.layer
    if not keep or any(not 0 <= k < len(layers) for k in keep) or list(keep) != sorted(set(keep)):
        raise ConfigError(f"layers {list(keep)} are not increasing indices in 0..{len(layers) - 1}")
    model.encoder.layer = torch.nn.ModuleList([layers[k] for k in keep])
    model.config.num_hidden_layers = len(keep)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("kept layers %s of %d from %s", list(keep), len(layers), src_dir)
    return Path(out_dir)


@dataclass(frozen=True)
class Targets:
    """Distillation targets: the teacher's unit vector (row k of `vectors`) of each of `titles`."""

    titles: Sequence[str]
    vectors: np.ndarray


def prune_ffn(
    src_dir: Path,
    out_dir: Path,
    targets: Targets,
    keep_ratio: float,
    *,
    batches: int = 16,
    batch_size: int = 64,
    max_length: int = 32,
    seed: int = 0,
) -> Path:
    """Save the encoder `src_dir` with each layer's FFN cut to its `keep_ratio` most important neurons.

    Importance is the cross-encoder's (`prune.ffn_terms`), summed over `batches` seeded batches of the
    distillation loss alone: the neurons that move the student's vectors towards the teacher's matter.
    """
    tokenizer, model = load(src_dir)
    layers = model.encoder.layer
    size = model.config.intermediate_size
    keep = kept_neurons(size, keep_ratio)
    torch.manual_seed(seed)
    model.train()
    scores = [torch.zeros(size) for _ in layers]
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        rows = rng.choice(len(targets.titles), size=min(batch_size, len(targets.titles)), replace=False).tolist()
        mine = embed(model, tokenizer, [targets.titles[r] for r in rows], max_length)
        loss = ((mine - torch.from_numpy(targets.vectors[rows])) ** 2).sum(dim=1).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        for total, term in zip(scores, ffn_terms(layers), strict=True):
            total += term
    model.zero_grad(set_to_none=True)
    cut_ffn(layers, scores, keep)
    model.config.intermediate_size = keep
    _save(model, tokenizer, Path(out_dir))
    log.info("pruned FFN %d -> %d neurons per layer (%s)", size, keep, src_dir)
    return Path(out_dir)


def fit(
    base_dir: Path,
    out_dir: Path,
    pairs: Sequence[Pair],
    config: FitConfig,
    *,
    targets: Targets | None = None,
    desc: str = "bi-encoder",
    snapshots: Sequence[int] = (),
) -> FitRecord:
    """Train the encoder in `base_dir` on `pairs` (in-batch negatives) and save it to `out_dir`.

    With `targets` (a student), each step adds the squared distance between its vectors and the teacher's
    for `batch_size` catalog titles, drawn in seeded epochs, weighted by `distil_weight`. At each step of
    `snapshots` the model as it stands is saved beside `out_dir`, as `<name>-step<N>` (points on one
    run's learning curve: the learning rate has not decayed to zero there, as it would in a run that short).
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer, model = load(base_dir)
    model.train()
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not n.endswith(NO_DECAY)], "weight_decay": 0.01},
        {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = linear_schedule(optimizer, int(config.steps * config.warmup_ratio), config.steps)
    batches = pair_batches(pairs, config.batch_size, config.steps, config.seed)
    titles = _epochs(len(targets.titles), np.random.default_rng(config.seed + 1)) if targets else None
    losses: list[float] = []
    started = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        a = embed(model, tokenizer, [pairs[k].title_a for k in batch], config.max_length)
        b = embed(model, tokenizer, [pairs[k].title_b for k in batch], config.max_length)
        loss = in_batch_loss(a, b, config.scale)
        if targets is not None and titles is not None:
            rows = [next(titles) for _ in range(config.batch_size)]
            mine = embed(model, tokenizer, [targets.titles[r] for r in rows], config.max_length)
            theirs = torch.from_numpy(targets.vectors[rows])
            loss = loss + config.distil_weight * ((mine - theirs) ** 2).sum(dim=1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step in snapshots:
            _save(model, tokenizer, Path(out_dir).with_name(f"{Path(out_dir).name}-step{step}"))
        if step % 50 == 0 or step == config.steps:
            log.info("%s: step %d of %d, loss %.4f", desc, step, config.steps, np.mean(losses[-50:]))
    seconds = time.perf_counter() - started
    out_dir = Path(out_dir)
    _save(model, tokenizer, out_dir)
    seen = config.steps * config.batch_size
    record = FitRecord(
        steps=config.steps,
        layers=model.config.num_hidden_layers,
        params=sum(p.numel() for p in model.parameters()),
        pairs_seen=seen,
        seconds=round(seconds, 2),
        pairs_per_s=round(seen / seconds, 2) if seconds > 0 else 0.0,
        first_loss=round(float(np.mean(losses[:10])), 5) if losses else float("nan"),
        final_loss=round(float(np.mean(losses[-10:])), 5) if losses else float("nan"),
        config=config,
    )
    record.write(out_dir)
    log.info(
        "%s: %d steps in %.0f s (%.1f pairs/s), loss %s -> %s",
        desc,
        config.steps,
        seconds,
        record.pairs_per_s,
        record.first_loss,
        record.final_loss,
    )
    return record


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.train()


@dataclass(frozen=True)
class RecallGate:
    """The student's retrieval recall against the teacher's."""

    passed: bool
    recall: float
    reference_recall: float
    min_ratio: float
    reason: str


def recall_gate(recall: float, reference_recall: float, min_ratio: float = MIN_RECALL_RATIO) -> RecallGate:
    """Pass when `recall` is at least `min_ratio` x `reference_recall` (NaN fails)."""
    floor = min_ratio * reference_recall
    passed = bool(recall >= floor)
    verdict = "at least" if passed else "below"
    reason = (
        f"retrieval recall@50 {recall:.4f} is {verdict} {min_ratio:.2f} x the teacher's {reference_recall:.4f} "
        f"(floor {floor:.4f})"
    )
    return RecallGate(passed, recall, reference_recall, min_ratio, reason)
