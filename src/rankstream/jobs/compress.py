"""`rankstream compress`: teacher -> layer-dropped students distilled from its scores -> ONNX -> INT8,
each variant evaluated on the valid split, gated against the teacher, and reported.

With signals (every preset), training lists come from the train split's last weeks, each window ranked
and described by tables built before it (rankstream.data.windows); a linear head over the signals and
the position prior is fitted on them first, and the teacher starts from that linear scorer.

Every step writes its result under `out_root/<preset>/` and is skipped when that result exists, so a
killed run continues where it stopped (training steps resume from their last checkpoint).
"""

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from rankstream.compression.build import tiny_bert, tiny_mpnet
from rankstream.compression.distil import TrainConfig, count_params, drop_layers, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.gate import accuracy_gate
from rankstream.compression.model import position_prior, with_position_prior
from rankstream.compression.mpnet import mpnet_path
from rankstream.compression.pairs import group_signals, make_groups
from rankstream.compression.prune import prune_ffn
from rankstream.compression.report import write_report
from rankstream.compression.signal_head import SignalHead
from rankstream.compression.train import minilm_path
from rankstream.compression.vocab import catalog_texts, trim_vocab
from rankstream.data.instances import build_instances
from rankstream.data.prepare import Prepared
from rankstream.evaluation.evalset import EvalSet, throughput
from rankstream.jobs.training_data import signal_training_data
from rankstream.stream.artifact import load_manifest, stamp_metrics
from rankstream.stream.ranker import Ranker
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

PresetName = Literal["tiny", "fast", "full"]
Base = Literal["minilm", "mpnet", "tiny", "tiny-mpnet"]
PARENTS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
    "tiny": "tiny-random-bert",
    "tiny-mpnet": "tiny-random-mpnet",
}
RUN_FILE = "run.json"
T = TypeVar("T")


@dataclass(frozen=True)
class Preset:
    name: str
    teacher_base: Base
    teacher_note: str
    train_instances: int | None
    teacher: TrainConfig
    students: dict[str, tuple[int, ...]]  # name -> layers it keeps of the model students start from
    student: TrainConfig
    # What students start from: None = the fine-tuned teacher's own layers (teacher and students share an
    # architecture); otherwise that pretrained BERT (with the same position prior and signal head).
    student_base: Base | None = None
    teacher_int8: bool = True  # also export and evaluate an INT8 teacher
    # Uniform negatives: a uniform sample keeps each list's position mix, so the listwise loss on it
    # agrees with ranking the full list; always adding the top candidates taught "top = negative".
    neg_per_instance: int = 15
    top_negatives: int = 0
    valid_instances: int | None = 400
    gate_tolerance: float = 0.02  # relative to the teacher's valid NDCG@10
    int8_budget: float = 0.005  # NDCG@10 INT8 may cost (0.5 point) before it is flagged
    speed_pairs: int = 640
    max_length: int = 64
    position_prior: bool = True  # see compression/model.py
    prune: dict[str, float] = field(default_factory=dict)  # student -> FFN keep ratio, then re-distil
    distil_groups: int | None = None  # groups the students see (default: what their steps consume)
    # Serve-time signals (stream/signals.py) through a linear head fitted before training; training
    # lists then come from `windows` windows of `window_days` at the end of the train split.
    signals: bool = True
    windows: int = 4
    window_days: int = 30
    head_l2: float = 1e-2
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # For tests: a random-weight 4-layer hidden-32 BERT stands in for the teacher; seconds.
    # Its teacher is a random MPNet and its students a random BERT, as in the full preset.
    "tiny": Preset(
        name="tiny",
        teacher_base="tiny-mpnet",
        teacher_note="random-weight 4-layer hidden-32 MPNet (test preset: the numbers mean nothing)",
        train_instances=120,
        teacher=TrainConfig(steps=6, groups_per_batch=2, lr=1e-3, checkpoint_every=3),
        student_base="tiny",
        students={"l2": (0, 3), "l1": (3,)},
        prune={"l1": 0.5},
        student=TrainConfig(steps=6, groups_per_batch=2, lr=1e-3, checkpoint_every=3),
        neg_per_instance=5,
        top_negatives=1,
        valid_instances=60,
        speed_pairs=64,
        windows=2,
        window_days=7,
        int8_budget=-1.0,  # forces the per-layer INT8 fallback on every student, so tests exercise it
    ),
    # The demo builds its model with this preset, so it must finish while someone waits: the teacher is
    # all-MiniLM-L6-v2 + position prior + signal head fine-tuned listwise (NOT the 12-layer mpnet teacher,
    # which trains several times slower); students keep 4 and 2 of its 6 layers; the 2-layer one is
    # pruned. Run times are in docs/results.md.
    "fast": Preset(
        name="fast",
        teacher_base="minilm",
        teacher_note="all-MiniLM-L6-v2 (6 layers, hidden 384) + position prior + linear head over the 8 serve-time "
        "signals, fine-tuned listwise on click data; not the 12-layer all-mpnet-base-v2 teacher of the full preset "
        "(chosen to finish within 15 minutes on 2 CPU cores)",
        train_instances=4000,
        teacher=TrainConfig(steps=200, groups_per_batch=2, lr=5e-5),
        students={"l4": (0, 2, 3, 5), "l2": (0, 5)},
        student=TrainConfig(steps=200, groups_per_batch=2, lr=1e-4),
        prune={"l2": 0.5},
    ),
    # The reference teacher: all-mpnet-base-v2 (12 layers, hidden 768, 109M parameters) + position prior +
    # signal head, fine-tuned listwise; students start from all-MiniLM-L6-v2 (with the same prior and head)
    # and learn from its scores only. MPNet is slow to train and to score on a CPU, so every step is
    # resumable (rerun the same command); run times are in docs/results.md.
    "full": Preset(
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
    ),
}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


class _Run:
    """The run's directory and its resumable record (`run.json`)."""

    def __init__(self, root: Path, preset: Preset) -> None:
        self.root = root
        self.work = root / "work"
        self.artifacts = root / "artifacts"
        self.work.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = root / RUN_FILE
        stored = json.loads(path.read_text()) if path.exists() else {}
        config = json.loads(json.dumps(asdict(preset)))
        # A run may resume under a preset that gained steps (new keys), never one whose settings changed.
        changed = [k for k, v in stored.get("preset", {}).items() if config.get(k) != v and k != "teacher_note"]
        if changed:
            raise ValueError(
                f"{root} holds a run whose preset differs in {changed}; rerun with --restart or pick another --out"
            )
        if stored:
            stored["preset"] = config
        self.state: dict[str, Any] = stored or {
            "preset": config,
            "run_id": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
            "timings_s": {},
            "variants": {},
        }
        self.save()

    def save(self) -> None:
        tmp = self.root / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str) + "\n")
        tmp.rename(self.root / RUN_FILE)

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """Run `fn`, adding its wall time to the step's total (a resumed step adds up across runs)."""
        t0 = time.perf_counter()
        out = fn()
        self.state["timings_s"][name] = round(self.state["timings_s"].get(name, 0.0) + time.perf_counter() - t0, 2)
        self.save()
        return out


def _export(
    run: _Run, preset: Preset, hf_dir: Path, variant: str, quantize: str, chain: list[str], parent: str
) -> Path:
    out = run.artifacts / variant
    if not out.exists():
        export_onnx(
            hf_dir,
            out,
            version=f"c{run.state['run_id']}-{preset.name}-{variant}",
            quantize=quantize,  # type: ignore[arg-type]
            max_length=preset.max_length,
            parent=parent,
            method_chain=chain,
        )
    return out


def _teacher_scores(run: _Run, teacher_artifact: Path, groups: list[Any]) -> list[np.ndarray]:
    cache = run.work / "teacher_scores.npz"
    if cache.exists():
        data = np.load(cache)
        if len(data.files) == len(groups) and all(len(data[f"g{i}"]) == len(g) for i, g in enumerate(groups)):
            log.info("teacher scores: %d groups read from %s", len(groups), cache)
            return [data[f"g{i}"] for i in range(len(groups))]
    ranker = Ranker.load(teacher_artifact)
    signals = [group_signals(g) for g in groups]
    scores = ranker.score_lists(
        [[(p.query, p.candidate) for p in g] for g in groups],
        None if ranker.signals is None else signals,  # type: ignore[arg-type]
    )
    np.savez(cache, **{f"g{i}": s for i, s in enumerate(scores)})
    log.info("teacher scores: %d groups scored, cached at %s", len(groups), cache)
    return list(scores)


def _add_student(
    run: _Run,
    preset: Preset,
    variants: dict[str, dict[str, Any]],
    name: str,
    hf_dir: Path,
    chain: list[str],
    parent: str,
) -> None:
    for q, label in (("none", "fp32"), ("int8", "int8")):
        key = f"student-{name}-{label}"
        variants[key] = {
            "hf_dir": hf_dir,
            "artifact": run.step(
                f"export_{key}", lambda key=key, q=q: _export(run, preset, hf_dir, key, q, chain, parent)
            ),
            "chain": chain,
            "role": "student",
        }


def _pretrained(run: _Run, kind: Base) -> Path:
    """The folder of pretrained model `kind` (the tiny ones are built, seeded, under the run)."""
    if kind == "minilm":
        return minilm_path()
    if kind == "mpnet":
        return mpnet_path(run.work)
    out = run.work / f"{kind}-base"
    if not (out / "config.json").exists():
        (tiny_bert if kind == "tiny" else tiny_mpnet)(out, seed=0, num_layers=4)
    return out


def _fp32_twin(key: str) -> str:
    return key.split("-int8")[0] + "-fp32"


def _int8_fallback(
    run: _Run,
    preset: Preset,
    key: str,
    variant: dict[str, Any],
    fp32_ndcg: float,
    valid: EvalSet,
    speed: Callable[[Ranker], dict[str, float]],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Keep the most INT8-sensitive encoder layers in fp32 until INT8 costs at most the budget.

    Sensitivity of a layer = valid NDCG@10 with only that layer left in fp32. Layers are added in that
    order; the first set within budget (or all but one layer) is exported as `<key>-fallback`.
    """
    hf_dir = Path(variant["hf_dir"])
    n_layers = int(json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"])
    trials_dir = run.work / "int8-trials"
    trials_dir.mkdir(exist_ok=True)
    log_ = run.state.setdefault("int8_fallback", {}).setdefault(key, {"single": {}, "cumulative": {}})

    def trial(layers: list[int]) -> float:
        name = f"{key}-fp32-layers-{'-'.join(map(str, layers))}"
        out = trials_dir / name
        if not out.exists():
            export_onnx(
                hf_dir, out, version=name, quantize="int8", max_length=preset.max_length, int8_fp32_layers=layers
            )
        return float(valid.quality(Ranker.load(out).score_lists)["ndcg@10"])

    single = {i: trial([i]) for i in range(n_layers)}
    log_["single"] = {str(i): v for i, v in single.items()}
    order = sorted(single, key=lambda i: -single[i])
    chosen: list[int] = []
    ndcg = float("nan")
    for i in order[: max(n_layers - 1, 1)]:
        chosen = sorted([*chosen, i])
        ndcg = single[i] if len(chosen) == 1 else trial(chosen)
        log_["cumulative"][",".join(map(str, chosen))] = ndcg
        if fp32_ndcg - ndcg <= preset.int8_budget:
            break
    log.info("%s: INT8 fallback keeps layers %s in fp32 (NDCG@10 %.4f vs fp32 %.4f)", key, chosen, ndcg, fp32_ndcg)
    out = run.artifacts / f"{key}-fallback"
    if not out.exists():
        export_onnx(
            hf_dir,
            out,
            version=f"c{run.state['run_id']}-{preset.name}-{key}-fallback",
            quantize="int8",
            max_length=preset.max_length,
            parent=variant.get("parent"),
            method_chain=variant["chain"],
            int8_fp32_layers=chosen,
        )
    ranker = Ranker.load(out)
    record = {
        "valid": valid.quality(ranker.score_lists),
        "speed": speed(ranker),
        "params": count_params(hf_dir),
        "fp32_layers": chosen,
    }
    run.save()
    return {**variant, "artifact": out, "role": "student (int8 per-layer fallback)"}, record


def compress(data_dir: Path, out_root: Path, preset_name: PresetName = "fast") -> Path:
    """Run the preset's pipeline into `out_root/<preset>`; returns that directory (report.* inside)."""
    preset = PRESETS[preset_name]
    run = _Run(Path(out_root).resolve() / preset.name, preset)  # run.json records absolute artifact paths
    started = time.perf_counter()

    prepared = Prepared.load(data_dir)

    def data() -> tuple[list[Any], list[float], SignalHead | None]:
        if not preset.signals:
            instances = build_instances(
                prepared.interactions,
                prepared.frames[0],
                prepared.neighbours,
                prepared.trending,
                n_candidates=50,
                max_instances=preset.train_instances,
                seed=0,
            )
            groups = make_groups(
                instances,
                prepared.catalog,
                neg_per_instance=preset.neg_per_instance,
                top_negatives=preset.top_negatives,
            )
            return groups, position_prior(instances), None
        return _signal_data(prepared, preset, run)

    groups, prior, head = run.step("data", data)
    run.state["train_groups"] = len(groups)
    run.state["train_pairs"] = sum(len(g) for g in groups)

    with_prior = preset.position_prior or head is not None
    if preset.position_prior:
        run.state["position_prior"] = prior

    def init_from(kind: Base, name: str) -> Path:
        """The pretrained `kind` with the position prior and the fitted signal head (classifier at zero)."""
        base = _pretrained(run, kind)
        if not with_prior:
            return base
        init = run.work / name
        if not (init / "config.json").exists():
            used = prior if preset.position_prior else []
            with_position_prior(base, init, used, max_length=preset.max_length, head=head)
        return init

    additions = ("+position-prior" if preset.position_prior else "") + (
        f"+signal-head:{SIGNALS.version}" if head is not None else ""
    )
    # Teacher.
    parent = PARENTS[preset.teacher_base]
    teacher_init = init_from(preset.teacher_base, "teacher-init")
    teacher_dir = run.work / "teacher"
    run.step("teacher_train", lambda: train_listwise(teacher_init, teacher_dir, groups, preset.teacher, desc="teacher"))
    chain = [f"finetune-listwise:{parent}{additions}"]
    if preset.student_base is None:
        student_source, student_chain = teacher_dir, chain
    else:
        student_source = init_from(preset.student_base, "student-init")
        student_chain = [f"init:{PARENTS[preset.student_base]}{additions}"]
    variants: dict[str, dict[str, Any]] = {}
    variants["teacher-fp32"] = {
        "hf_dir": teacher_dir,
        "artifact": run.step(
            "export_teacher_fp32", lambda: _export(run, preset, teacher_dir, "teacher-fp32", "none", chain, parent)
        ),
        "chain": chain,
        "role": "teacher",
    }
    if with_prior:
        # Ablation: a model before training = position prior (+ the fitted signal head, with the classifier
        # at zero: exactly the non-neural linear scorer); shows what the text adds. Exported from the
        # students' start when it differs from the teacher's: the same scores, at the smaller model's cost.
        ablation_src = run.work / ("teacher-init" if preset.student_base is None else "student-init")
        name, a_chain = (
            ("prior-only-fp32", ["position-prior-only"])
            if head is None
            else ("signals-linear-fp32", [f"linear:position-prior+signal-head:{SIGNALS.version}"])
        )
        variants[name] = {
            "hf_dir": ablation_src,
            "artifact": run.step(
                "export_prior_only", lambda: _export(run, preset, ablation_src, name, "none", a_chain, parent)
            ),
            "chain": a_chain,
            "role": "ablation",
        }
    if preset.teacher_int8:
        variants["teacher-int8"] = {
            "hf_dir": teacher_dir,
            "artifact": run.step(
                "export_teacher_int8",
                lambda: _export(run, preset, teacher_dir, "teacher-int8", "int8", chain, parent),
            ),
            "chain": chain,
            "role": "quantized teacher",
        }

    # Students: the groups they train on, scored once by the teacher (fp32 ONNX, one batch per group).
    rng = np.random.default_rng(1)
    n_distil = preset.distil_groups or min(len(groups), preset.student.steps * preset.student.groups_per_batch)
    picked = sorted(rng.choice(len(groups), size=min(n_distil, len(groups)), replace=False).tolist())
    distil_groups = [groups[i] for i in picked]
    scores = run.step(
        "teacher_scores", lambda: _teacher_scores(run, variants["teacher-fp32"]["artifact"], distil_groups)
    )
    teacher_version = f"c{run.state['run_id']}-{preset.name}-teacher-fp32"
    for name, keep in preset.students.items():
        init = run.work / f"{name}-init"
        if not init.exists():
            drop_layers(student_source, init, keep)
        student_dir = run.work / name
        run.step(
            f"{name}_distil",
            lambda init=init, student_dir=student_dir, name=name: train_listwise(
                init, student_dir, distil_groups, preset.student, teacher_scores=scores, desc=f"distil {name}"
            ),
        )
        s_chain = [*student_chain, f"drop-layers:{','.join(map(str, keep))}", "distil:listwise-kl"]
        _add_student(run, preset, variants, name, student_dir, s_chain, teacher_version)
        ratio = preset.prune.get(name)
        if ratio is not None:
            pname = f"{name}-ffn{round(ratio * 100)}"
            pruned_init, pruned_dir = run.work / f"{pname}-init", run.work / pname
            if not (pruned_init / "config.json").exists():
                run.step(
                    f"{pname}_prune",
                    lambda src=student_dir, dst=pruned_init, ratio=ratio: prune_ffn(
                        src, dst, distil_groups, scores, keep_ratio=ratio, max_length=preset.max_length
                    ),
                )
            redistil = replace(preset.student, steps=max(1, preset.student.steps // 2))
            run.step(
                f"{pname}_redistil",
                lambda src=pruned_init, dst=pruned_dir, pname=pname, cfg=redistil: train_listwise(
                    src, dst, distil_groups, cfg, teacher_scores=scores, desc=f"re-distil {pname}"
                ),
            )
            trimmed = run.work / f"{pname}-trim"
            if not (trimmed / "config.json").exists():
                run.step(
                    f"{pname}_trim_vocab",
                    lambda src=pruned_dir, dst=trimmed: trim_vocab(src, dst, catalog_texts(prepared.catalog.values())),
                )
            vocab = json.loads((trimmed / "config.json").read_text())["vocab_size"]
            p_chain = [
                *s_chain,
                f"prune-ffn:keep-{ratio:.0%}-by-importance",
                "distil:listwise-kl",
                f"trim-vocab:{vocab}-catalog-tokens",
            ]
            _add_student(run, preset, variants, pname, trimmed, p_chain, teacher_version)

    # Evaluate every variant on the valid split (same lists for all), then gate against the teacher.
    valid = run.step("valid_set", lambda: EvalSet.build(data_dir, "valid", max_instances=preset.valid_instances))
    speed_pairs = valid.speed_pairs(preset.speed_pairs)
    speed_signals = valid.speed_signals(preset.speed_pairs)

    def speed(ranker: Ranker) -> dict[str, float]:
        sig = speed_signals if ranker.signals is not None else None
        return throughput(ranker.score, speed_pairs, signals=sig, batch_size=32)

    results: dict[str, dict[str, Any]] = {}
    for key, v in variants.items():
        record = run.state["variants"].get(key)
        if record is None or "valid" not in record:

            def measure(v: dict[str, Any] = v) -> dict[str, Any]:
                ranker = Ranker.load(v["artifact"])
                quality = valid.quality(ranker.score_lists)
                params = count_params(v["hf_dir"])
                return {"valid": quality, "speed": speed(ranker), "params": params}

            record = run.step(f"eval_{key}", measure)
        results[key] = record
    for key in [k for k in variants if k.startswith("student-") and k.endswith("-int8")]:
        fp32_ndcg = results[_fp32_twin(key)]["valid"]["ndcg@10"]
        done = run.state["variants"].get(f"{key}-fallback")
        if done is not None and "valid" in done:  # resumed run: the fallback was built and measured
            variants[f"{key}-fallback"] = {**variants[key], "artifact": Path(done["artifact"]), "role": done["role"]}
            results[f"{key}-fallback"] = done
        elif fp32_ndcg - results[key]["valid"]["ndcg@10"] > preset.int8_budget:
            fb = run.step(f"int8_fallback_{key}", lambda key=key, fp32_ndcg=fp32_ndcg: _int8_fallback(
                run, preset, key, variants[key], fp32_ndcg, valid, speed
            ))  # fmt: skip
            if fb is not None:
                variants[f"{key}-fallback"], results[f"{key}-fallback"] = fb
    teacher_ndcg = results["teacher-fp32"]["valid"]["ndcg@10"]
    for key, v in variants.items():
        r = results[key]
        gate = accuracy_gate(r["valid"]["ndcg@10"], teacher_ndcg, tolerance=preset.gate_tolerance)
        int8_cost = results[_fp32_twin(key)]["valid"]["ndcg@10"] - r["valid"]["ndcg@10"] if "-int8" in key else None
        run.state["variants"][key] = r | {
            "artifact": str(v["artifact"]),
            "hf_dir": str(v["hf_dir"]),
            "role": v["role"],
            "method_chain": list(load_manifest(Path(v["artifact"])).method_chain),
            "size_bytes": _dir_size(v["artifact"]),
            "model_bytes": (Path(v["artifact"]) / "model.onnx").stat().st_size,
            "gate": {"passed": gate.passed, "floor": gate.floor, "reason": gate.reason},
            "int8_cost_ndcg": int8_cost,
            "int8_over_budget": int8_cost is not None and int8_cost > preset.int8_budget,
        }
        stamp_metrics(
            Path(v["artifact"]),
            {f"valid_{k}": float(x) for k, x in r["valid"].items()}
            | {"params": float(r["params"]), "gate_passed": float(gate.passed)},
        )
    run.state["baselines_valid"] = valid.baselines()
    run.state["valid_rankable"] = len(valid.lists)
    run.state["valid_instances"] = valid.instances
    run.state["elapsed_this_invocation_s"] = round(time.perf_counter() - started, 1)
    run.save()
    write_report(run.root, run.state)
    log.info("compress %s finished in %.0fs; report at %s", preset.name, time.perf_counter() - started, run.root)
    return run.root


def _signal_data(prepared: Prepared, preset: Preset, run: _Run) -> tuple[list[Any], list[float], SignalHead]:
    """Training groups with signals from the train split's last windows, the position prior, the fitted head."""
    data = signal_training_data(
        prepared,
        windows=preset.windows,
        days=preset.window_days,
        max_instances=preset.train_instances,
        l2=preset.head_l2,
    )
    groups = make_groups(
        data.instances,
        prepared.catalog,
        neg_per_instance=preset.neg_per_instance,
        top_negatives=preset.top_negatives,
        signals=data.signals,
    )
    run.state["train_windows"] = data.windows
    run.state["signal_head"] = asdict(data.head)
    return groups, data.prior, data.head


def best_student(run_root: Path) -> Path:
    """The artifact of a finished run's fastest student that passed the accuracy gate."""
    run_file = Path(run_root) / RUN_FILE
    variants = json.loads(run_file.read_text()).get("variants", {}) if run_file.exists() else {}
    passed = [
        v
        for v in variants.values()
        if v.get("role", "").startswith("student") and v.get("gate", {}).get("passed") and "speed" in v
    ]
    if not passed:
        raise ValueError(f"{run_root}: no student passed the accuracy gate (see its report.md)")
    return Path(max(passed, key=lambda v: v["speed"]["pairs_per_s"])["artifact"])


def clean(out_root: Path, preset_name: PresetName) -> None:
    """Remove a preset's run directory (start over instead of resuming)."""
    shutil.rmtree(Path(out_root) / preset_name, ignore_errors=True)
