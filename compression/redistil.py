"""Re-distillation of a served student: warm-started from the torch weights it was exported from, distilled
on new lists toward the teacher's scores, and exported through the same chain as `rankstream compress`
(ONNX, fused attention, per-channel dynamic INT8), with a method chain that stays a fixed length.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankstream.compression.distil import Group, TrainConfig, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.train import TRAINING_LOG

log = logging.getLogger(__name__)

# Steps export_onnx appends; a warm-started student's chain drops them before its own export adds them again.
_EXPORT_STEPS = ("onnx:", "ort-optimize:", "unfuse:", "quantize:", "int8-fallback:")
RECOMPRESS_STEP = "recompress:"


@dataclass(frozen=True)
class StudentSource:
    """A student to warm-start from: its served version and the torch weights it was exported from."""

    version: str
    hf_dir: Path
    method_chain: tuple[str, ...]


def recompress_chain(source_chain: Sequence[str], source_version: str, teacher_version: str, window: str) -> list[str]:
    """The new student's method chain: how its source was made, then this cycle (export steps follow).

    Earlier recompression steps are folded away (the manifest's `parent` links back to them), so the
    chain stays a fixed length however many cycles a model went through.
    """
    kept = [s for s in source_chain if not s.startswith(_EXPORT_STEPS) and not s.startswith(RECOMPRESS_STEP)]
    return [
        *kept,
        f"{RECOMPRESS_STEP}warm-start:{source_version}",
        f"{RECOMPRESS_STEP}distil:listwise-kl:teacher={teacher_version}:{window}",
    ]


def redistil(
    source: StudentSource,
    groups: Sequence[Group],
    scores: Sequence[np.ndarray],
    work_dir: Path,
    *,
    version: str,
    config: TrainConfig,
    chain: Sequence[str],
    metrics: Mapping[str, float] | None = None,
) -> tuple[Path, Path]:
    """Distil `source` on `groups` toward the teacher's `scores`, export INT8; (torch dir, artifact dir).

    The torch weights stay in `work_dir/student`, so the next cycle can warm-start from this version.
    """
    student = train_listwise(
        source.hf_dir, work_dir / "student", groups, config, teacher_scores=scores, desc=f"re-distil {version}"
    )
    training = json.loads((student / TRAINING_LOG).read_text())
    train_metrics = {f"train_{k}": float(v) for k, v in training.items() if isinstance(v, int | float)}
    artifact = export_onnx(
        student,
        work_dir / "artifact",
        version=version,
        quantize="int8",
        max_length=config.max_length,  # served at the length it was trained at
        parent=source.version,
        method_chain=list(chain),
        metrics={**train_metrics, **(metrics or {})},
    )
    return student, artifact
