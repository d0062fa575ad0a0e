"""`rankstream embed`: the co-purchase bi-encoder, teacher to shipped student, and its retrieval gate.

Steps: co-purchased title pairs of the train split -> the teacher (all-MiniLM-L6-v2 fine-tuned on them)
-> a student keeping a few of its layers, distilled on the teacher's vector of every catalog title plus
the pair loss -> ONNX artifacts (the student in dynamic INT8, the teacher in fp32 for comparison) ->
the gate: the shipped student's retrieval recall@50 on the valid split against the teacher's -> the
encoding speed of each. Everything lands in `out` with `report.json` (`EmbedReport`, its one owner).
"""

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from rankstream.compression.biencoder import (
    FIT_RECORD,
    FitConfig,
    FitRecord,
    RecallGate,
    Targets,
    drop_layers,
    evenly_spaced,
    fit,
    prune_ffn,
    recall_gate,
)
from rankstream.compression.embed import embed_texts
from rankstream.compression.encoder_export import REFERENCE_TITLES, export_encoder
from rankstream.compression.train import minilm_path
from rankstream.data.copurchase import TitlePair, copurchase_pairs
from rankstream.data.instances import eligible_baskets
from rankstream.data.prepare import Prepared
from rankstream.evaluation.text import ItemVectors, retrieval_recall
from rankstream.stream.artifact import MANIFEST
from rankstream.stream.encoder import TextEncoder
from rankstream.stream.errors import ConfigError, JobError

log = logging.getLogger(__name__)

T = TypeVar("T")
REPORT = "report.json"
TEACHER_LAYERS = 6
# Enough pairs that no run here sees one twice before the per-item cap runs out.
MAX_PAIRS = 200_000
# Titles each encoder embeds for the speed figures: enough for a steady rate, few enough for one title
# per ONNX run.
SPEED_TITLES = 1000
SPEED_ROUNDS = 7
# ONNX Runtime threads the artifacts are timed at: 1, what the catalog job serves with by default
# (RANKSTREAM_ENCODER_THREADS), and 2, this machine's cores.
SPEED_THREADS = (1, 2)


PRETRAINED = "minilm-pretrained-int8"


def export_pretrained(encoders: Path) -> Path:
    """all-MiniLM-L6-v2 as installed, no training, as a dynamic INT8 bi-encoder artifact `encoders/PRETRAINED`
    (reused when already there): text retrieval in a few seconds of export instead of an hour of `embed`."""
    out = Path(encoders) / PRETRAINED
    if (out / MANIFEST).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_encoder(
        minilm_path(),
        out,
        quantize="int8",
        reference_titles=REFERENCE_TITLES,
        version=PRETRAINED,
        method_chain=["all-MiniLM-L6-v2:pretrained"],
    )


@dataclass(frozen=True)
class EmbedConfig:
    """One `rankstream embed` run."""

    steps: int
    student_layers: int = 2
    student_ffn: float = 1.0  # share of each kept layer's FFN neurons the student keeps
    student_steps: int | None = None  # None: as many as the teacher's
    batch_size: int = 64
    snapshots: tuple[int, ...] = ()  # teacher steps to save a copy at, for a learning curve
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or (self.student_steps is not None and self.student_steps < 1):
            raise ConfigError("--steps and --student-steps must be at least 1")
        if not 1 <= self.student_layers <= TEACHER_LAYERS:
            raise ConfigError(f"--student-layers must be in 1..{TEACHER_LAYERS}, got {self.student_layers}")
        if not 0.0 < self.student_ffn <= 1.0:
            raise ConfigError(f"--student-ffn is a share of the FFN neurons kept, in (0, 1], got {self.student_ffn}")
        if any(not 0 < s < self.steps for s in self.snapshots):
            raise ConfigError(f"snapshots {self.snapshots} must lie strictly between 0 and --steps {self.steps}")

    @property
    def student_name(self) -> str:
        """How versions and reports name the student: `student-l2-int8`, or `student-l2-ffn50-int8` when pruned."""
        ffn = "" if self.student_ffn == 1.0 else f"-ffn{round(self.student_ffn * 100)}"
        return f"student-l{self.student_layers}{ffn}-int8"


@dataclass(frozen=True)
class Recall:
    """Retrieval recall@50 on the valid split (text neighbours alone, new-to-user positives)."""

    baskets: int
    teacher: float
    student: float
    student_int8: float


@dataclass(frozen=True)
class OnnxSpeed:
    """The two artifacts at `threads` intra-op threads, one title per run as `TextEncoder` serves: titles/s
    (the median of the rounds) and the student's ratio to the teacher in each round (median, lowest,
    highest). A ratio is taken within a round because the machine's speed moves between rounds, and it
    moves the small student's rate more than the teacher's."""

    threads: int
    teacher_fp32: float
    student_int8: float
    ratio: float
    ratio_min: float
    ratio_max: float


@dataclass(frozen=True)
class Speed:
    """Titles per second on `titles` catalog titles over `rounds` alternating rounds: torch in batches of 128
    (the model's loading included), medians; the ONNX artifacts at each of SPEED_THREADS."""

    titles: int
    teacher_torch: float
    student_torch: float
    onnx: tuple[OnnxSpeed, ...]
    rounds: int = 1


@dataclass(frozen=True)
class EmbedReport:
    """What `rankstream embed` built and measured; written to `out/report.json` by `write` alone."""

    config: EmbedConfig
    pairs: int
    student_keeps: list[int]
    teacher: FitRecord
    student: FitRecord
    artifact: str
    teacher_artifact: str
    recall: Recall
    gate: RecallGate
    speed: Speed
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / REPORT
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


class EmbedJob:
    """Builds the bi-encoder into `out` from the prepared data in `data_dir`, step by step."""

    def __init__(self, data_dir: Path, out: Path, config: EmbedConfig) -> None:
        self.config = config
        self.out = Path(out)
        self.prepared = Prepared.load(data_dir)
        self.catalog = self.prepared.catalog
        self.seconds: dict[str, float] = {}
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.version = f"b{stamp}-{config.student_name}"

    def run(self) -> EmbedReport:
        """Every step; the report is written before the gate can refuse, so a refusal keeps its figures.

        Raises:
            JobError: no pairs to learn from, or the student misses the recall gate.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        pairs = self._timed("pairs", self.pairs)
        teacher = self._timed("teacher", lambda: self.teacher(pairs))
        student = self._timed("student", lambda: self.student(pairs))
        artifact, teacher_artifact = self._timed("export", self.export)
        recall = self._timed("recall", lambda: self.recall(artifact))
        gate = recall_gate(recall.student_int8, recall.teacher)
        speed = self._timed("speed", lambda: self.speed(artifact, teacher_artifact))
        keeps = evenly_spaced(TEACHER_LAYERS, self.config.student_layers)
        report = EmbedReport(
            self.config,
            len(pairs),
            keeps,
            teacher,
            student,
            str(artifact),
            str(teacher_artifact),
            recall,
            gate,
            speed,
            self.seconds,
        )
        path = report.write(self.out)
        log.info("%s; report in %s", gate.reason, path)
        if not gate.passed:
            raise JobError(f"student refused: {gate.reason}; train it longer (--student-steps) or keep more layers")
        return report

    def _timed(self, name: str, step: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        result = step()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        return result

    def pairs(self) -> list[TitlePair]:
        """Co-purchased title pairs of the train split (`copurchase_pairs`)."""
        pairs = copurchase_pairs(self.prepared.frame("train"), self.catalog, MAX_PAIRS, seed=self.config.seed)
        if not pairs:
            raise JobError("the train split has no co-purchased pair of titled items; prepare more data")
        return pairs

    def _fit_config(self, steps: int) -> FitConfig:
        c = self.config
        return FitConfig(steps=steps, batch_size=c.batch_size, seed=c.seed, threads=c.threads)

    def teacher(self, pairs: Sequence[TitlePair]) -> FitRecord:
        """all-MiniLM-L6-v2 fine-tuned on `pairs`; a finished teacher of the same config is reused."""
        out = self.out / "teacher"
        config = self._fit_config(self.config.steps)
        if (out / FIT_RECORD).exists() and FitRecord.read(out).config == config:
            log.info("teacher: already trained at %s with this config, reusing it", out)
            return FitRecord.read(out)
        return fit(minilm_path(), out, pairs, config, desc="teacher", snapshots=self.config.snapshots)

    def student(self, pairs: Sequence[TitlePair]) -> FitRecord:
        """The teacher's evenly spaced layers (each FFN cut to `student_ffn` of its neurons, the most important
        first), distilled on its vector of every catalog title + the pair loss."""
        keep = evenly_spaced(TEACHER_LAYERS, self.config.student_layers)
        start = drop_layers(self.out / "teacher", self.out / "student-init", keep)
        titles = list(self.catalog.values())
        vectors = embed_texts(titles, self.out / "teacher")
        if self.config.student_ffn < 1.0:
            prune_ffn(start, start, Targets(titles, vectors), self.config.student_ffn, seed=self.config.seed)
        config = self._fit_config(self.config.student_steps or self.config.steps)
        record = fit(start, self.out / "student", pairs, config, targets=Targets(titles, vectors), desc="student")
        shutil.rmtree(start)
        return record

    def export(self) -> tuple[Path, Path]:
        """The student as a dynamic INT8 artifact (what ships) and the teacher as fp32 (its speed reference)."""
        folder = self.out / "artifacts"
        student = folder / self.version
        teacher = folder / self.version.replace(self.config.student_name, "teacher-fp32")
        chain = ["minilm-l6:co-purchase-in-batch-negatives"]
        ffn = [f"ffn:{self.config.student_ffn}"] if self.config.student_ffn < 1.0 else []
        export_encoder(
            self.out / "student",
            student,
            quantize="int8",
            reference_titles=REFERENCE_TITLES,
            version=student.name,
            method_chain=[
                *chain,
                f"layers:{evenly_spaced(TEACHER_LAYERS, self.config.student_layers)}",
                *ffn,
                "distil",
            ],
        )
        export_encoder(
            self.out / "teacher",
            teacher,
            quantize="none",
            reference_titles=REFERENCE_TITLES,
            version=teacher.name,
            method_chain=chain,
        )
        return student, teacher

    def recall(self, artifact: Path) -> Recall:
        """Retrieval recall@50 on the valid split of the teacher, the student and the shipped student."""
        eligible, _ = eligible_baskets(self.prepared.interactions, self.prepared.frame("valid"))
        baskets = [(e[3], e[4]) for e in eligible]
        ids = list(self.catalog)
        titles = [self.catalog[i] for i in ids]

        def measured(matrix: np.ndarray) -> float:
            return retrieval_recall(ItemVectors(tuple(ids), matrix), baskets, self.catalog)

        recall = Recall(
            len(baskets),
            measured(embed_texts(titles, self.out / "teacher")),
            measured(embed_texts(titles, self.out / "student")),
            measured(TextEncoder.load(artifact, threads=self.config.threads).encode(titles)),
        )
        log.info("valid retrieval recall@50 on %d baskets: %s", len(baskets), recall)
        return recall

    def speed(self, artifact: Path, teacher_artifact: Path) -> Speed:
        """Titles/s of each encoder on the same catalog titles: SPEED_ROUNDS rounds, every encoder one after
        another in each (one pass each swung by a third on a shared machine)."""
        titles = list(self.catalog.values())[:SPEED_TITLES]
        encoders: dict[tuple[str, int], Callable[[list[str]], object]] = {
            ("teacher", 0): lambda t: embed_texts(t, self.out / "teacher"),  # 0: torch
            ("student", 0): lambda t: embed_texts(t, self.out / "student"),
        }
        for threads in SPEED_THREADS:
            encoders[("teacher", threads)] = TextEncoder.load(teacher_artifact, threads=threads).encode
            encoders[("student", threads)] = TextEncoder.load(artifact, threads=threads).encode

        def rate(encode: Callable[[list[str]], object]) -> float:
            encode(titles[:8])  # warm-up: first-call allocations are not the steady rate
            t0 = time.perf_counter()
            encode(titles)
            return len(titles) / (time.perf_counter() - t0)

        rounds = [{key: rate(encode) for key, encode in encoders.items()} for _ in range(SPEED_ROUNDS)]
        rates = {key: np.array([r[key] for r in rounds]) for key in encoders}

        def median(key: tuple[str, int]) -> float:
            return round(float(np.median(rates[key])), 1)

        onnx = []
        for threads in SPEED_THREADS:
            ratios = rates[("student", threads)] / rates[("teacher", threads)]
            onnx.append(
                OnnxSpeed(
                    threads,
                    median(("teacher", threads)),
                    median(("student", threads)),
                    round(float(np.median(ratios)), 2),
                    round(float(ratios.min()), 2),
                    round(float(ratios.max()), 2),
                )
            )
        return Speed(len(titles), median(("teacher", 0)), median(("student", 0)), tuple(onnx), rounds=SPEED_ROUNDS)


def encoder_vectors(directory: Path) -> tuple[Callable[[Mapping[str, str]], ItemVectors], str]:
    """The catalog -> item vectors function of a fine-tuned encoder, and how the report names it: an ONNX
    bi-encoder artifact (a folder with manifest.json, through `TextEncoder`) or a Hugging Face model folder
    (through `embed_texts`, torch fp32)."""
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        encoder = TextEncoder.load(directory)

        def onnx(catalog: Mapping[str, str]) -> ItemVectors:
            ids = tuple(catalog)
            return ItemVectors(ids, encoder.encode([catalog[i] for i in ids]))

        chain = ", ".join(encoder.manifest.method_chain)
        return onnx, f"fine-tuned bi-encoder, ONNX artifact {encoder.version} ({chain}), one title per run"
    if not (directory / "config.json").exists():
        raise ConfigError(f"{directory} is neither a bi-encoder artifact (manifest.json) nor a model (config.json)")

    def hf(catalog: Mapping[str, str]) -> ItemVectors:
        ids = tuple(catalog)
        return ItemVectors(ids, embed_texts([catalog[i] for i in ids], directory))

    return hf, f"fine-tuned bi-encoder, Hugging Face model {directory} (torch fp32, mean-pooled, normalised)"
