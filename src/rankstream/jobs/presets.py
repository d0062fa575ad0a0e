"""Every preset of the offline jobs, as named factory functions: `tiny()`, `fast()`, `full()` for
`rankstream compress`, `recompress_fast()`, `recompress_tiny()` for `rankstream recompress`.

A field here is one that some preset sets; what every preset shares is a constant below.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from rankstream.compression.distil import TrainConfig
from rankstream.data.instances import OPEN_TARGETS, OpenTarget
from rankstream.stream.errors import ConfigError

Base = Literal["minilm", "mpnet", "tiny", "tiny-mpnet"]
PARENTS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
    "tiny": "tiny-random-bert",
    "tiny-mpnet": "tiny-random-mpnet",
}
MAX_LENGTH = 64  # tokens per pair, as the scorer encodes them, unless a preset says otherwise
GATE_TOLERANCE = 0.02  # a student may lose this share of the teacher's valid NDCG@10
HEAD_L2 = 1e-2  # ridge penalty of the signal head's fit


@dataclass(frozen=True)
class CompressPreset:
    """One `rankstream compress` pipeline: teacher, students, and how they are trained and judged."""

    name: str
    teacher_base: Base
    teacher_note: str
    train_instances: int
    teacher: TrainConfig
    students: Mapping[str, tuple[int, ...]]  # name -> layers it keeps of the model students start from
    student: TrainConfig
    prune: Mapping[str, float]  # student -> FFN keep ratio, then re-distil and trim the vocabulary
    # What students start from: None = the fine-tuned teacher's own layers (teacher and students share an
    # architecture); otherwise that pretrained model (with the same position prior and signal head).
    student_base: Base | None = None
    teacher_int8: bool = True  # also export and evaluate an INT8 teacher
    # Uniform negatives: a uniform sample keeps each list's position mix, so the listwise loss on it
    # agrees with ranking the full list; always adding the top candidates taught "top = negative".
    neg_per_instance: int = 15
    top_negatives: int = 0
    valid_instances: int = 400
    int8_budget: float = 0.005  # NDCG@10 INT8 may cost before the per-layer fallback is built
    speed_pairs: int = 640
    # Training lists come from `windows` windows of `window_days` at the end of the train split.
    windows: int = 4
    window_days: int = 30
    # Open states per basket among the training lists (`eligible_baskets`): most events a scorer serves come
    # from a user in the middle of a basket, and a model that only saw basket starts ranks those worse than
    # its own candidate order (docs/results.md, "Open baskets").
    open_baskets: int = 1
    # An open state's positives: the rest of the basket, or its next line alone ("next": the event a list is
    # judged by when it is written just before it). "next" at 16 open states a basket ranks fresh lists'
    # next line 7% better but whole next baskets 22% worse, and late lists worse too: not the default
    # (docs/results.md, "Training on the next line").
    open_target: OpenTarget = "rest"
    # Tokens per pair, as every model of the run is trained, exported and served; the teacher's and the
    # student's TrainConfig carry the same number (checked below), so no step trains at one length and
    # serves at another.
    max_length: int = MAX_LENGTH

    def __post_init__(self) -> None:
        _check_open(self.open_baskets, self.open_target)
        for role, config in (("teacher", self.teacher), ("student", self.student)):
            if config.max_length != self.max_length:
                raise ConfigError(
                    f"preset {self.name!r}: the {role} trains at {config.max_length} tokens per pair but the "
                    f"preset serves {self.max_length}; give both the same max_length"
                )


def tiny() -> CompressPreset:
    """For tests and the integration fixtures: a random-weight MPNet teacher and random BERT students, as in
    `full`; the numbers mean nothing. 32 tokens per pair, as `fast`: off the default, so a step that trains
    or exports at the default length instead of the preset's shows in the artifacts the tests check."""
    tokens = 32
    return CompressPreset(
        name="tiny",
        teacher_base="tiny-mpnet",
        teacher_note="random-weight 4-layer hidden-32 MPNet (test preset: the numbers mean nothing)",
        train_instances=120,
        teacher=TrainConfig(steps=6, groups_per_batch=2, lr=1e-3, checkpoint_every=3, max_length=tokens),
        student_base="tiny",
        students={"l2": (0, 3), "l1": (3,)},
        prune={"l1": 0.5},
        student=TrainConfig(steps=6, groups_per_batch=2, lr=1e-3, checkpoint_every=3, max_length=tokens),
        neg_per_instance=5,
        top_negatives=1,
        valid_instances=60,
        speed_pairs=64,
        windows=2,
        window_days=7,
        int8_budget=-1.0,  # forces the per-layer INT8 fallback on every student, so tests exercise it
        max_length=tokens,
    )


def fast() -> CompressPreset:
    """The demo's model, so it must finish while someone waits: a MiniLM-L6 teacher (not the 12-layer MPNet,
    which trains several times slower), students keeping 4 and 2 of its layers, the 2-layer one pruned.
    Run times are in docs/results.md.

    32 tokens per pair, not 64: a pair averages 42 tokens and the cut falls on the history side (oldest
    titles first); trained at 32, the model's end-to-end NDCG@10 equals the 64-token one's while a user's
    scoring costs about a quarter less (docs/results.md, "A model trained at 32 tokens per pair")."""
    tokens = 32
    return CompressPreset(
        name="fast",
        teacher_base="minilm",
        teacher_note="all-MiniLM-L6-v2 (6 layers, hidden 384) + position prior + linear head over the 8 serve-time "
        "signals, fine-tuned listwise on click data; not the 12-layer all-mpnet-base-v2 teacher of the full preset "
        "(chosen to finish within 15 minutes on 2 CPU cores)",
        train_instances=4000,
        teacher=TrainConfig(steps=200, groups_per_batch=2, lr=5e-5, max_length=tokens),
        students={"l4": (0, 2, 3, 5), "l2": (0, 5)},
        student=TrainConfig(steps=200, groups_per_batch=2, lr=1e-4, max_length=tokens),
        prune={"l2": 0.5},
        max_length=tokens,
    )


def full() -> CompressPreset:
    """The reference teacher, all-mpnet-base-v2, fine-tuned listwise; students start from all-MiniLM-L6-v2
    and learn from its scores only. MPNet is slow on a CPU, so every step resumes (rerun the command)."""
    return CompressPreset(
        name="full",
        teacher_base="mpnet",
        teacher_note="all-mpnet-base-v2 (MPNet, 12 layers, hidden 768) + position prior + linear head over the 8 "
        "serve-time signals, fine-tuned listwise on click data; students start from all-MiniLM-L6-v2",
        train_instances=4000,
        teacher=TrainConfig(steps=150, groups_per_batch=2, lr=3e-5, checkpoint_every=25),
        student_base="minilm",
        students={"l4": (0, 2, 3, 5), "l2": (0, 5)},
        student=TrainConfig(steps=200, groups_per_batch=2, lr=1e-4),
        prune={"l2": 0.5},
        teacher_int8=False,
    )


def _check_open(open_baskets: int, open_target: str) -> None:
    if open_baskets < 0:
        raise ConfigError(f"open_baskets is a count of open states per basket (0: none), got {open_baskets}")
    if open_target not in OPEN_TARGETS:
        raise ConfigError(f"open_target is one of {list(OPEN_TARGETS)}, got {open_target!r}")


COMPRESS: dict[str, Callable[[], CompressPreset]] = {"tiny": tiny, "fast": fast, "full": full}


def compress_preset(name: str) -> CompressPreset:
    """The compress preset called `name`."""
    if name not in COMPRESS:
        raise ConfigError(f"no compress preset {name!r}; pick one of {sorted(COMPRESS)}")
    return COMPRESS[name]()


@dataclass(frozen=True)
class RecompressPreset:
    """One recompression cycle's knobs. `tolerance` is absolute: 0.01 lets NDCG@10 drop by one point."""

    days: float | None = 28.0
    since: datetime | None = None
    from_kafka: bool = False
    holdout: float = 0.2
    train: TrainConfig = TrainConfig(steps=200, groups_per_batch=2, lr=5e-5)
    neg_per_instance: int = 15
    max_eval_instances: int | None = 1000
    tolerance: float = 0.01
    canary_share: float | None = None  # publish into a canary at this share of users, not straight to active
    open_baskets: int = 1  # open states per basket among the training lists, as in CompressPreset
    open_target: OpenTarget = "rest"

    def __post_init__(self) -> None:
        _check_open(self.open_baskets, self.open_target)
        if self.canary_share is not None and not 0.0 < self.canary_share < 1.0:
            raise ConfigError(f"--canary is a share of users in (0, 1), got {self.canary_share}")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout is a share of the window's baskets in (0, 1), got {self.holdout}")
        if self.since is None and (self.days is None or self.days <= 0):
            raise ConfigError("give the window as --days N (N > 0) or --since TIME")


def recompress_fast() -> RecompressPreset:
    """Real data: four weeks of clicks hold enough baskets to train on and to hold out for the gate, and a
    short distillation keeps a cycle cheap enough to run often on one niced thread beside the scorers."""
    return RecompressPreset()


def recompress_tiny() -> RecompressPreset:
    """Tests: the random-weight tiny BERT, a handful of steps, every click of the data."""
    return RecompressPreset(
        days=None,
        since=datetime(1970, 1, 1, tzinfo=UTC),
        train=TrainConfig(steps=4, groups_per_batch=2, lr=1e-3, checkpoint_every=2),
        neg_per_instance=5,
        max_eval_instances=None,
    )


RECOMPRESS: dict[str, Callable[[], RecompressPreset]] = {"fast": recompress_fast, "tiny": recompress_tiny}


def recompress_preset(name: str) -> RecompressPreset:
    """The recompress preset called `name`."""
    if name not in RECOMPRESS:
        raise ConfigError(f"no recompress preset {name!r}; pick one of {sorted(RECOMPRESS)}")
    return RECOMPRESS[name]()
