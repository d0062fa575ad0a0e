"""A quick model from given lists: one INT8 artifact trained as a compress preset trains its teacher, without
distillation (the integration tests' models are built this way)."""

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rankstream.compression.distil import Group, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.model import with_position_prior
from rankstream.compression.signal_head import SignalHead
from rankstream.compression.train import TRAINING_LOG
from rankstream.jobs.compress import pretrained
from rankstream.jobs.presets import PARENTS, CompressPreset

log = logging.getLogger(__name__)


def build_artifact(
    groups: Sequence[Group],
    out_root: Path,
    *,
    version: str,
    preset: CompressPreset,
    prior: Sequence[float] = (),
    head: SignalHead | None = None,
) -> Path:
    """One INT8 artifact `out_root/version` trained on `groups` as the preset trains its teacher, from the
    preset's student base with `prior` and `head`: a quick model from given lists, without distillation."""
    base_kind = preset.student_base or preset.teacher_base
    with tempfile.TemporaryDirectory(prefix=f"rankstream-build-{version}-") as tmp:
        work = Path(tmp)
        init = with_position_prior(
            pretrained(base_kind, work), work / "init", prior, max_length=preset.max_length, head=head
        )
        trained = train_listwise(init, work / "trained", groups, preset.teacher, desc=f"build {version}")
        training = json.loads((trained / TRAINING_LOG).read_text())
        metrics = {f"train_{k}": float(v) for k, v in training.items() if isinstance(v, int | float)}
        additions = "+position-prior" + (f"+signal-head:{head.version}" if head is not None else "")
        artifact = export_onnx(
            trained,
            Path(out_root) / version,
            version=version,
            quantize="int8",
            max_length=preset.max_length,
            parent=PARENTS[base_kind],
            method_chain=[f"finetune-listwise:{PARENTS[base_kind]}{additions}"],
            metrics=metrics,
        )
    log.info("built %s (%s preset) at %s", version, preset.name, artifact)
    return artifact
