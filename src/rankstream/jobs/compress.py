"""`rankstream compress`: teacher -> layer-dropped students distilled from its scores -> ONNX -> INT8,
each variant evaluated on the valid split, gated against the teacher, and reported.
Students come as fp32, dynamic and static INT8 (calibrated, batch-invariant): the report shows both costs.

Training lists come from the train split's last weeks, each basket ranked and described by the live
tables just before it (rankstream.data.windows, rankstream.data.live_instances), as is the valid split
the variants are gated on; a linear head over the signals and the position prior is fitted on them
first, and the teacher starts from that linear scorer.

Every step writes its result under `out_root/<preset>/` and is skipped when that result exists, so a
killed run continues where it stopped (training steps resume from their last checkpoint).
"""

import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from rankstream.compression.calibrate import calibration_lists
from rankstream.compression.distil import Group, count_params, drop_layers, teacher_scores, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.gate import accuracy_gate
from rankstream.compression.model import with_position_prior
from rankstream.compression.mpnet import mpnet_path
from rankstream.compression.prune import prune_ffn
from rankstream.compression.signal_head import SignalHead
from rankstream.compression.tiny import tiny_bert, tiny_mpnet
from rankstream.compression.train import minilm_path
from rankstream.compression.vocab import catalog_texts, trim_vocab
from rankstream.data.live_instances import Choose
from rankstream.data.prepare import Prepared
from rankstream.evaluation.evalset import EvalSet, throughput
from rankstream.jobs.int8_fallback import int8_fallback
from rankstream.jobs.presets import GATE_TOLERANCE, PARENTS, Base, CompressPreset, compress_preset
from rankstream.jobs.report import write_report
from rankstream.jobs.runs import CompressRunRecord, FallbackTrials, Measured, VariantRecord
from rankstream.jobs.training_data import preset_training_lists
from rankstream.stream.artifact import load_manifest, stamp_metrics
from rankstream.stream.ranker import Ranker
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

PresetName = Literal["tiny", "fast", "full"]
ADDITIONS = f"+position-prior+signal-head:{SIGNALS.version}"


@dataclass(frozen=True)
class Variant:
    """A variant built in this invocation: its torch weights, artifact, method chain and role."""

    hf_dir: Path
    artifact: Path
    chain: list[str]
    role: str
    parent: str | None


def pretrained(kind: Base, work: Path) -> Path:
    """The folder of pretrained model `kind` (the tiny ones are built, seeded, under `work`)."""
    if kind == "minilm":
        return minilm_path()
    if kind == "mpnet":
        return mpnet_path(work)
    out = work / f"{kind}-base"
    if not (out / "config.json").exists():
        (tiny_bert if kind == "tiny" else tiny_mpnet)(out, seed=0, num_layers=4)
    return out


def start_model(
    kind: Base, work: Path, name: str, prior: Sequence[float], head: SignalHead, *, max_length: int
) -> Path:
    """`work/name`: the pretrained `kind` with the position prior and the fitted signal head (classifier at
    zero), where a model's training starts; kept when already there."""
    init = work / name
    if not (init / "config.json").exists():
        with_position_prior(pretrained(kind, work), init, prior, max_length=max_length, head=head)
    return init


class CompressJob:
    """One preset's run in `out_root/<preset>`: each step a method, each recorded in run.json."""

    def __init__(
        self, data_dir: Path, out_root: Path, preset: CompressPreset, merge: tuple[str, Choose] | None = None
    ) -> None:
        """`merge`: (version, chooser) of a learned merge whose candidates the lists and the gate use."""
        self.preset = preset
        self.choose = None if merge is None else merge[1]
        self.data_dir = Path(data_dir)
        self.root = Path(out_root).resolve() / preset.name  # run.json records absolute artifact paths
        self.work, self.artifacts = self.root / "work", self.root / "artifacts"
        self.work.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(asdict(preset)))
        if merge is not None:
            settings["merge"] = merge[0]
        self.record = CompressRunRecord.begin(self.root, preset.name, preset.teacher_note, settings)
        self.prepared = Prepared.load(data_dir)
        self.variants: dict[str, Variant] = {}
        self.results: dict[str, Measured] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the block's wall time to the step's total (a resumed step adds up across runs) and save."""
        t0 = time.perf_counter()
        yield
        total = self.record.timings_s.get(name, 0.0) + time.perf_counter() - t0
        self.record.timings_s[name] = round(total, 2)
        self.record.save(self.root)

    def run(self) -> Path:
        """Every step in order; returns the run's folder (report.* inside)."""
        started = time.perf_counter()
        groups, prior, head = self.training_data()
        teacher_dir, chain = self.teacher(groups, prior, head)
        distil_groups, scores = self.teacher_scores(groups)
        teacher_version = f"c{self.record.run_id}-{self.preset.name}-teacher-fp32"
        source, source_chain = self.student_source(teacher_dir, chain, prior, head)
        for name, keep in self.preset.students.items():
            self.student(name, keep, source, source_chain, distil_groups, scores, teacher_version)
        valid = self.evaluate()
        self.int8_fallbacks(valid)
        self.gate_and_record(valid)
        self.record.elapsed_this_invocation_s = round(time.perf_counter() - started, 1)
        self.record.save(self.root)
        write_report(self.root, self.record)
        log.info(
            "compress %s finished in %.0fs; report at %s", self.preset.name, time.perf_counter() - started, self.root
        )
        return self.root

    def training_data(self) -> tuple[list[Group], list[float], SignalHead]:
        """Training lists with signals from the train split's last windows, the position prior, the fitted head."""
        with self.step("data"):
            groups, data = preset_training_lists(self.prepared, self.preset, self.choose)
        self.record.train_windows = data.windows
        self.record.signal_head = data.head
        self.record.train_groups = len(groups)
        self.record.train_pairs = sum(len(g) for g in groups)
        self.record.position_prior = data.prior
        return groups, data.prior, data.head

    def init_from(self, kind: Base, name: str, prior: Sequence[float], head: SignalHead) -> Path:
        return start_model(kind, self.work, name, prior, head, max_length=self.preset.max_length)

    def export(
        self,
        hf_dir: Path,
        key: str,
        quantize: str,
        chain: list[str],
        role: str,
        parent: str | None,
        calibration: Sequence[Group] = (),
    ) -> None:
        """Export `hf_dir` as variant `key` (skipped when its artifact exists) and remember it."""
        out = self.artifacts / key
        with self.step(f"export_{key.replace('-', '_')}"):
            if not out.exists():
                export_onnx(
                    hf_dir,
                    out,
                    version=f"c{self.record.run_id}-{self.preset.name}-{key}",
                    quantize=quantize,  # type: ignore[arg-type]
                    max_length=self.preset.max_length,
                    parent=parent,
                    method_chain=chain,
                    calibration=calibration,
                )
        self.variants[key] = Variant(hf_dir, out, chain, role, parent)

    def teacher(self, groups: list[Group], prior: list[float], head: SignalHead) -> tuple[Path, list[str]]:
        """Train the teacher listwise on the labels; export it, its INT8 twin and the linear-scorer ablation."""
        parent = PARENTS[self.preset.teacher_base]
        teacher_init = self.init_from(self.preset.teacher_base, "teacher-init", prior, head)
        teacher_dir = self.work / "teacher"
        with self.step("teacher_train"):
            train_listwise(teacher_init, teacher_dir, groups, self.preset.teacher, desc="teacher")
        chain = [f"finetune-listwise:{parent}{ADDITIONS}"]
        self.export(teacher_dir, "teacher-fp32", "none", chain, "teacher", parent)
        # Ablation: the model before training is exactly the non-neural linear scorer (prior + signal head,
        # classifier at zero); shows what the text adds. Exported from the students' start when it differs
        # from the teacher's: the same scores, at the smaller model's cost.
        ablation = "teacher-init" if self.preset.student_base is None else "student-init"
        if self.preset.student_base is not None:
            self.init_from(self.preset.student_base, "student-init", prior, head)
        a_chain = [f"linear:position-prior+signal-head:{SIGNALS.version}"]
        self.export(self.work / ablation, "signals-linear-fp32", "none", a_chain, "ablation", parent)
        if self.preset.teacher_int8:
            self.export(teacher_dir, "teacher-int8", "int8", chain, "quantized teacher", parent)
        return teacher_dir, chain

    def teacher_scores(self, groups: list[Group]) -> tuple[list[Group], list[np.ndarray]]:
        """The lists the students train on, scored once by the fp32 teacher (one batch per list)."""
        rng = np.random.default_rng(1)
        student = self.preset.student
        n_distil = min(len(groups), student.steps * student.groups_per_batch)
        picked = sorted(rng.choice(len(groups), size=n_distil, replace=False).tolist())
        distil_groups = [groups[i] for i in picked]
        with self.step("teacher_scores"):
            cache = self.work / "teacher_scores.npz"
            scores = teacher_scores(self.variants["teacher-fp32"].artifact, distil_groups, cache=cache)
        return distil_groups, scores

    def student_source(
        self, teacher_dir: Path, chain: list[str], prior: list[float], head: SignalHead
    ) -> tuple[Path, list[str]]:
        """What students start from: the teacher's own layers, or the preset's student base."""
        if self.preset.student_base is None:
            return teacher_dir, chain
        init = self.init_from(self.preset.student_base, "student-init", prior, head)
        return init, [f"init:{PARENTS[self.preset.student_base]}{ADDITIONS}"]

    def student(
        self,
        name: str,
        keep: tuple[int, ...],
        source: Path,
        source_chain: list[str],
        groups: list[Group],
        scores: list[np.ndarray],
        teacher_version: str,
    ) -> None:
        """Drop layers, distil, export fp32 and INT8; then, for a pruned student, prune and re-distil."""
        init = self.work / f"{name}-init"
        if not init.exists():
            drop_layers(source, init, keep)
        student_dir = self.work / name
        with self.step(f"{name}_distil"):
            train_listwise(init, student_dir, groups, self.preset.student, teacher_scores=scores, desc=f"distil {name}")
        chain = [*source_chain, f"drop-layers:{','.join(map(str, keep))}", "distil:listwise-kl"]
        self.export_student(name, student_dir, chain, teacher_version, groups)
        ratio = self.preset.prune.get(name)
        if ratio is not None:
            self.pruned_student(name, ratio, student_dir, chain, groups, scores, teacher_version)

    def pruned_student(
        self,
        name: str,
        ratio: float,
        student_dir: Path,
        chain: list[str],
        groups: list[Group],
        scores: list[np.ndarray],
        teacher_version: str,
    ) -> None:
        """Cut the FFN to its most important neurons, re-distil, trim the vocabulary to the catalog's."""
        pname = f"{name}-ffn{round(ratio * 100)}"
        pruned_init, pruned_dir, trimmed = self.work / f"{pname}-init", self.work / pname, self.work / f"{pname}-trim"
        if not (pruned_init / "config.json").exists():
            with self.step(f"{pname}_prune"):
                prune_ffn(student_dir, pruned_init, groups, scores, keep_ratio=ratio, max_length=self.preset.max_length)
        redistil = replace(self.preset.student, steps=max(1, self.preset.student.steps // 2))
        with self.step(f"{pname}_redistil"):
            train_listwise(pruned_init, pruned_dir, groups, redistil, teacher_scores=scores, desc=f"re-distil {pname}")
        if not (trimmed / "config.json").exists():
            with self.step(f"{pname}_trim_vocab"):
                trim_vocab(pruned_dir, trimmed, catalog_texts(self.prepared.catalog.values()))
        vocab = json.loads((trimmed / "config.json").read_text())["vocab_size"]
        p_chain = [
            *chain,
            f"prune-ffn:keep-{ratio:.0%}-by-importance",
            "distil:listwise-kl",
            f"trim-vocab:{vocab}-catalog-tokens",
        ]
        self.export_student(pname, trimmed, p_chain, teacher_version, groups)

    def export_student(
        self, name: str, hf_dir: Path, chain: list[str], teacher_version: str, groups: list[Group]
    ) -> None:
        """fp32, dynamic INT8 and static INT8 calibrated on some of the lists the student was distilled on."""
        calib = calibration_lists(groups)
        for q in ("none", "int8", "int8-static"):
            self.export(
                hf_dir, f"student-{name}-{q.replace('none', 'fp32')}", q, chain, "student", teacher_version, calib
            )

    def evaluate(self) -> EvalSet:
        """Every variant on the valid split (the same lists for all); a finished run's figures are reused."""
        with self.step("valid_set"):
            valid = EvalSet.build(self.data_dir, "valid", max_instances=self.preset.valid_instances, choose=self.choose)
        for key, v in self.variants.items():
            done = self.record.variants.get(key)
            if done is not None and done.valid:
                self.results[key] = Measured(done.valid, done.speed, done.params)
                continue
            with self.step(f"eval_{key}"):
                ranker = Ranker.load(v.artifact)
                self.results[key] = Measured(
                    valid.quality(ranker.score_lists), self.speed(valid, ranker), count_params(v.hf_dir)
                )
        return valid

    def speed(self, valid: EvalSet, ranker: Ranker) -> dict[str, float]:
        """Pairs per second and batch latencies on the valid split's pairs, as the report compares them."""
        pairs = valid.speed_pairs(self.preset.speed_pairs)
        signals = valid.speed_signals(self.preset.speed_pairs) if ranker.signals is not None else None
        return throughput(ranker.score, pairs, signals=signals, batch_size=32)

    def int8_fallbacks(self, valid: EvalSet) -> None:
        """For each INT8 student that costs more than the budget, a graph with its most sensitive layers fp32."""
        for key in [k for k in self.variants if k.startswith("student-") and k.endswith("-int8")]:
            fp32_ndcg = self.results[_fp32_twin(key)].valid["ndcg@10"]
            fb_key = f"{key}-fallback"
            done = self.record.variants.get(fb_key)
            if done is not None and done.valid:  # resumed run: the fallback was built and measured
                self.variants[fb_key] = replace(self.variants[key], artifact=done.artifact, role=done.role)
                self.results[fb_key] = Measured(done.valid, done.speed, done.params, done.fp32_layers)
            elif fp32_ndcg - self.results[key].valid["ndcg@10"] > self.preset.int8_budget:
                with self.step(f"int8_fallback_{key}"):
                    self.int8_fallback(key, fp32_ndcg, valid)

    def int8_fallback(self, key: str, fp32_ndcg: float, valid: EvalSet) -> None:
        variant = self.variants[key]
        trials = self.record.int8_fallback.setdefault(key, FallbackTrials())
        chosen = int8_fallback(
            variant.hf_dir,
            self.work / "int8-trials",
            key,
            fp32_ndcg,
            valid,
            trials,
            budget=self.preset.int8_budget,
            max_length=self.preset.max_length,
        )
        out = self.artifacts / f"{key}-fallback"
        if not out.exists():
            export_onnx(
                variant.hf_dir,
                out,
                version=f"c{self.record.run_id}-{self.preset.name}-{key}-fallback",
                quantize="int8",
                max_length=self.preset.max_length,
                parent=variant.parent,
                method_chain=variant.chain,
                int8_fp32_layers=chosen,
            )
        ranker = Ranker.load(out)
        fb_key = f"{key}-fallback"
        self.variants[fb_key] = replace(variant, artifact=out, role="student (int8 per-layer fallback)")
        measured = Measured(valid.quality(ranker.score_lists), self.speed(valid, ranker), count_params(variant.hf_dir))
        self.results[fb_key] = replace(measured, fp32_layers=chosen)

    def gate_and_record(self, valid: EvalSet) -> None:
        """Gate every variant against the fp32 teacher; record it and stamp its manifest's metrics."""
        teacher_ndcg = self.results["teacher-fp32"].valid["ndcg@10"]
        for key, v in self.variants.items():
            m = self.results[key]
            gate = accuracy_gate(m.valid["ndcg@10"], teacher_ndcg, tolerance=GATE_TOLERANCE)
            int8_cost = None
            if "-int8" in key:
                int8_cost = self.results[_fp32_twin(key)].valid["ndcg@10"] - m.valid["ndcg@10"]
            self.record.variants[key] = VariantRecord(
                artifact=v.artifact,
                hf_dir=v.hf_dir,
                role=v.role,
                gate=gate,
                method_chain=list(load_manifest(v.artifact).method_chain),
                valid=m.valid,
                speed=m.speed,
                params=m.params,
                size_bytes=_dir_size(v.artifact),
                model_bytes=(v.artifact / "model.onnx").stat().st_size,
                int8_cost_ndcg=int8_cost,
                int8_over_budget=int8_cost is not None and int8_cost > self.preset.int8_budget,
                fp32_layers=m.fp32_layers,
            )
            metrics = {f"valid_{k}": float(x) for k, x in m.valid.items()}
            stamp_metrics(v.artifact, metrics | {"params": float(m.params), "gate_passed": float(gate.passed)})
        self.record.baselines_valid = valid.baselines()
        self.record.valid_rankable = len(valid.lists)
        self.record.valid_instances = valid.instances


def _fp32_twin(key: str) -> str:
    return key.split("-int8")[0] + "-fp32"


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def compress(
    data_dir: Path, out_root: Path, preset_name: PresetName = "fast", merge: tuple[str, Choose] | None = None
) -> Path:
    """Run the preset's pipeline into `out_root/<preset>`; returns that directory (report.* inside).
    `merge`: (version, chooser) of a learned merge to train and gate on its candidates."""
    return CompressJob(data_dir, out_root, compress_preset(preset_name), merge).run()


def best_student(run_root: Path) -> Path:
    """The artifact of a finished run's fastest student that passed the accuracy gate."""
    return CompressRunRecord.load(run_root).best_student()[1].artifact


def clean(out_root: Path, preset_name: PresetName) -> None:
    """Remove a preset's run directory (start over instead of resuming)."""
    shutil.rmtree(Path(out_root) / preset_name, ignore_errors=True)
