"""The record of a `rankstream compress` run (`run.json` in the run's folder). `CompressRunRecord` is its one
owner: the compress job, recompression, `rankstream bench model` and the GPU bundle read it through here.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rankstream.compression.gate import GateResult
from rankstream.compression.signal_head import SignalHead
from rankstream.stream.errors import ConfigError, JobError

RUN_FILE = "run.json"


@dataclass
class Measured:
    """A variant's figures on the valid split: quality, speed, parameters (and fp32 layers of a fallback)."""

    valid: dict[str, float]
    speed: dict[str, float]
    params: int
    fp32_layers: list[int] | None = None


@dataclass
class VariantRecord:
    """One exported variant of a run: where it lies, how it was made, what it measured, its gate."""

    artifact: Path
    hf_dir: Path
    role: str  # teacher, quantized teacher, ablation, student, student (int8 per-layer fallback)
    gate: GateResult
    method_chain: list[str] = field(default_factory=list)
    valid: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    params: int = 0
    size_bytes: int = 0
    model_bytes: int = 0
    int8_cost_ndcg: float | None = None
    int8_over_budget: bool = False
    fp32_layers: list[int] | None = None

    @property
    def is_student(self) -> bool:
        return self.role.startswith("student")

    @property
    def pairs_per_s(self) -> float:
        return float(self.speed.get("pairs_per_s", 0.0))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VariantRecord":
        gate = data.get("gate", {})
        nan = math.nan
        return cls(
            artifact=Path(data["artifact"]),
            hf_dir=Path(data.get("hf_dir", "")),
            role=data.get("role", ""),
            gate=GateResult(
                passed=bool(gate.get("passed", False)),
                ndcg=float(gate.get("ndcg", nan)),
                reference_ndcg=float(gate.get("reference_ndcg", nan)),
                floor=float(gate.get("floor", nan)),
                tolerance=float(gate.get("tolerance", nan)),
                reason=str(gate.get("reason", "")),
            ),
            method_chain=list(data.get("method_chain", [])),
            valid=dict(data.get("valid", {})),
            speed=dict(data.get("speed", {})),
            params=int(data.get("params", 0)),
            size_bytes=int(data.get("size_bytes", 0)),
            model_bytes=int(data.get("model_bytes", 0)),
            int8_cost_ndcg=data.get("int8_cost_ndcg"),
            int8_over_budget=bool(data.get("int8_over_budget", False)),
            fp32_layers=data.get("fp32_layers"),
        )


@dataclass
class FallbackTrials:
    """Valid NDCG@10 of INT8 graphs with some layers kept fp32: each layer alone, then growing sets."""

    single: dict[str, float] = field(default_factory=dict)
    cumulative: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainWindow:
    """One training window at the end of the train split and how many instances it held."""

    start: str
    end: str
    instances: int


@dataclass
class CompressRunRecord:
    """What a compress run did and measured; resumable: steps already recorded are not run again."""

    preset_name: str
    teacher_note: str
    settings: dict[str, Any]  # the preset as written when the run began; a resumed run must match it
    run_id: str
    timings_s: dict[str, float] = field(default_factory=dict)
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    train_groups: int = 0
    train_pairs: int = 0
    position_prior: list[float] = field(default_factory=list)
    train_windows: list[TrainWindow] = field(default_factory=list)
    signal_head: SignalHead | None = None
    int8_fallback: dict[str, FallbackTrials] = field(default_factory=dict)
    baselines_valid: dict[str, dict[str, float]] = field(default_factory=dict)
    valid_rankable: int = 0
    valid_instances: int = 0
    elapsed_this_invocation_s: float = 0.0

    @classmethod
    def begin(cls, root: Path, preset_name: str, teacher_note: str, settings: dict[str, Any]) -> "CompressRunRecord":
        """The record of the run in `root`: the stored one when it ran these settings, else a new one.

        Raises:
            ConfigError: `root` holds a run of other settings.
        """
        if not (Path(root) / RUN_FILE).exists():
            record = cls(preset_name, teacher_note, settings, datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
            record.save(root)
            return record
        record = cls.load(root)
        # A run may resume under a preset that gained or lost settings, never one whose settings changed.
        changed = [k for k, v in record.settings.items() if k in settings and settings[k] != v]
        if changed:
            raise ConfigError(
                f"{root} holds a run whose preset differs in {changed}; rerun with --restart or pick another --out"
            )
        record.settings, record.teacher_note = settings, teacher_note
        record.save(root)
        return record

    @classmethod
    def load(cls, root: Path) -> "CompressRunRecord":
        """The record in `root`.

        Raises:
            ConfigError: there is no run there.
        """
        path = Path(root) / RUN_FILE
        if not path.is_file():
            raise ConfigError(
                f"{root}: no {RUN_FILE}; run `rankstream compress` first, or point at a finished run's folder"
            )
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not readable JSON ({exc}); rerun `rankstream compress --restart`") from exc
        settings = data.get("preset", {})
        head = data.get("signal_head")
        return cls(
            preset_name=data.get("preset_name", settings.get("name", "")),
            teacher_note=data.get("teacher_note", settings.get("teacher_note", "")),
            settings=settings,
            run_id=data.get("run_id", ""),
            timings_s=data.get("timings_s", {}),
            variants={k: VariantRecord.from_json(v) for k, v in data.get("variants", {}).items()},
            train_groups=data.get("train_groups", 0),
            train_pairs=data.get("train_pairs", 0),
            position_prior=data.get("position_prior", []),
            train_windows=[TrainWindow(**w) for w in data.get("train_windows", [])],
            signal_head=None if head is None else SignalHead(**{k: _tuple(v) for k, v in head.items()}),
            int8_fallback={k: FallbackTrials(**v) for k, v in data.get("int8_fallback", {}).items()},
            baselines_valid=data.get("baselines_valid", {}),
            valid_rankable=data.get("valid_rankable", 0),
            valid_instances=data.get("valid_instances", 0),
            elapsed_this_invocation_s=data.get("elapsed_this_invocation_s", 0.0),
        )

    def save(self, root: Path) -> None:
        """Write the record atomically: a kill leaves the old record or the new one."""
        data = asdict(self)
        data["preset"] = data.pop("settings")
        tmp = Path(root) / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.rename(Path(root) / RUN_FILE)

    def best_student(self, *, int8_only: bool = False) -> tuple[str, VariantRecord]:
        """The fastest student that passed the gate (only INT8 ones with `int8_only`), with its key.

        Raises:
            JobError: no student passed.
        """
        passed = [
            (v.pairs_per_s, key, v)
            for key, v in self.variants.items()
            if key.startswith("student-") or v.is_student
            if v.gate.passed and (not int8_only or key.endswith("-int8"))
        ]
        if not passed:
            raise JobError(
                f"no student of run {self.run_id} passed the accuracy gate (see its report.md); train longer "
                "(another preset) or rerun with --restart"
            )
        _, key, variant = max(passed, key=lambda t: (t[0], t[1]))
        return key, variant


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
