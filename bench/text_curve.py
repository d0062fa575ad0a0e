"""`python -m rankstream.bench.text_curve`: what the cross-encoder's text adds as its training grows.

From a finished `rankstream compress` run: the teacher's training lists are rebuilt as the run built them
(`preset_training_lists`; refused when their count differs from the run's, i.e. the data or the code
changed), and the teacher is trained again from the run's own start (`work/teacher-init`: the pretrained
encoder with the position prior and the fitted signal head, classifier at zero; rebuilt from the rebuilt
lists' prior and head, as compress builds it, when the run's folder no longer holds it) for each of `--steps`:
separate runs, each with its whole learning-rate schedule, not snapshots of one. Each is exported fp32
and measured end to end on every test basket (`rankstream eval --end-to-end`'s `measure`), beside the
run's own teacher (the preset's steps): NDCG@10 of the model, and of its linear part alone on the same
candidates and signals (the text ablation), paired with a 95% bootstrap interval; the same on one open
state per basket. Runs and artifacts go to `RUN/curve/`; a finished one is reused.
"""

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rankstream.compression.distil import Group, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.train import TRAINING_LOG
from rankstream.data.prepare import Prepared
from rankstream.evaluation.endtoend import MODEL, NO_TEXT, EndToEnd, OrderResult, Ratio, load_model, measure
from rankstream.jobs.compress import start_model
from rankstream.jobs.presets import PARENTS, compress_preset
from rankstream.jobs.runs import CompressRunRecord
from rankstream.jobs.training_data import SignalTrainingData, preset_training_lists
from rankstream.stream.errors import ConfigError
from rankstream.stream.live import LiveParams
from rankstream.stream.settings import load_settings

log = logging.getLogger(__name__)

PAIR = f"{MODEL}_vs_{NO_TEXT}"


@dataclass(frozen=True)
class Slice:
    """One model on one set of instances: NDCG@10 with and without its text, and their paired ratio."""

    with_text: float
    without_text: float
    ratio: float | None
    ci95: list[float] | None  # of the ratio


@dataclass(frozen=True)
class CurvePoint:
    steps: int
    model: str
    train_s: float  # the training run's own seconds (training.json)
    baskets: Slice
    open_baskets: Slice | None


@dataclass(frozen=True)
class TextCurve:
    run: str
    preset: str
    train_groups: int
    points: list[CurvePoint]

    def format(self) -> str:
        rows = [
            f"text gain of {self.preset}'s teacher ({self.run}), {self.train_groups:,} training lists; NDCG@10 on "
            "all test baskets, with text / linear part alone, paired ratio [95% CI]",
            f"{'steps':>6} {'train s':>8} {'baskets: text / linear':>24} {'ratio [95% CI]':>24} "
            f"{'open: text / linear':>22} {'ratio [95% CI]':>24}",
        ]

        def cells(s: Slice | None) -> tuple[str, str]:
            if s is None:
                return "-", "-"
            ci = f" [{s.ci95[0]:.3f}, {s.ci95[1]:.3f}]" if s.ci95 else ""
            ratio = "-" if s.ratio is None else f"x{s.ratio:.3f}{ci}"
            return f"{s.with_text:.4f} / {s.without_text:.4f}", ratio

        for p in self.points:
            b, o = cells(p.baskets), cells(p.open_baskets)
            rows.append(f"{p.steps:>6} {p.train_s:>8.0f} {b[0]:>24} {b[1]:>24} {o[0]:>22} {o[1]:>24}")
        return "\n".join(rows)


def slice_of(orders: Mapping[str, OrderResult], paired: Mapping[str, Mapping[str, Ratio]]) -> Slice:
    """The text ablation's figures from one `EndToEnd` table (its orders and paired ratios)."""
    r = paired[PAIR]["ndcg@10"]
    with_text, without = orders[MODEL].metrics["ndcg@10"], orders[NO_TEXT].metrics["ndcg@10"]
    return Slice(with_text or 0.0, without or 0.0, r.ratio, None if r.ci95 is None else list(r.ci95))


def point(steps: int, model: str, train_s: float, e2e: EndToEnd) -> CurvePoint:
    ob = e2e.open_baskets
    opened = None if ob is None else slice_of(ob.orders, ob.paired)
    return CurvePoint(steps, model, train_s, slice_of(e2e.orders, e2e.paired), opened)


def curve_dirs(run_dir: Path, steps: int) -> tuple[Path, Path]:
    """(the retrained teacher's weights, its fp32 artifact) for `steps` under `RUN/curve/`."""
    curve = run_dir / "curve"
    return curve / f"teacher-{steps}", curve / "artifacts" / f"teacher-{steps}-fp32"


def retrain(
    run_dir: Path, record: CompressRunRecord, groups: list[Group], data: SignalTrainingData | None, steps: int
) -> Path:
    """The run's teacher trained again from its start for `steps`, exported fp32 (reused when present)."""
    preset = compress_preset(record.preset_name)
    out, artifact = curve_dirs(run_dir, steps)
    if (artifact / "manifest.json").exists():
        return artifact
    if data is None:
        raise ValueError("retraining needs the run's rebuilt training data")
    start = start_model(
        preset.teacher_base, run_dir / "work", "teacher-init", data.prior, data.head, max_length=preset.max_length
    )
    config = replace(preset.teacher, steps=steps)
    train_listwise(start, out, groups, config, desc=f"teacher {steps}")
    parent = PARENTS[preset.teacher_base]
    export_onnx(
        out,
        artifact,
        version=f"c{record.run_id}-{preset.name}-teacher-{steps}-fp32",
        quantize="none",
        max_length=preset.max_length,
        parent=parent,
        method_chain=[f"finetune-listwise:{parent}:{steps}-steps"],
    )
    return artifact


def training_seconds(hf_dir: Path) -> float:
    return float(json.loads((hf_dir / TRAINING_LOG).read_text())["seconds"])


def text_curve(
    run_dir: Path,
    data_dir: Path,
    steps: list[int],
    open_baskets: int = 1,
    *,
    accept_signals: str | None = None,
    params: LiveParams | None = None,
) -> TextCurve:
    """The curve's points (see the module doc). `accept_signals` and `params` measure a run made on an
    older signal set on the tables it was trained on; they do not train (its lists would not be rebuilt)."""
    record = CompressRunRecord.load(run_dir)
    preset = compress_preset(record.preset_name)
    prepared = Prepared.load(data_dir)
    groups: list[Group] = []
    data = None
    if any(not (curve_dirs(run_dir, n)[1] / "manifest.json").exists() for n in steps):
        groups, data = preset_training_lists(prepared, preset)
        if len(groups) != record.train_groups:
            raise ConfigError(
                f"{run_dir}: rebuilt {len(groups)} training lists where the run trained on {record.train_groups}; "
                "the data or the code changed since: run the curve on a fresh compress run"
            )
    models = [(preset.teacher.steps, run_dir / "artifacts" / "teacher-fp32", run_dir / "work" / "teacher")]
    models += [(n, retrain(run_dir, record, groups, data, n), curve_dirs(run_dir, n)[0]) for n in steps]
    settings = load_settings()
    points = []
    for n, artifact, hf_dir in sorted(models):
        ranker, top = load_model(artifact, settings, accept_signals=accept_signals)
        e2e = measure(
            prepared,
            "test",
            ranker=ranker,
            rerank_top=top,
            model_path=artifact,
            open_baskets=open_baskets,
            params=params,
        )
        points.append(point(n, ranker.version, training_seconds(hf_dir), e2e))
        log.info("text curve: %d steps measured: %s", n, points[-1])
    return TextCurve(str(run_dir), preset.name, record.train_groups, points)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m rankstream.bench.text_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("var/compress/fast"), help="a finished compress run")
    ap.add_argument("--data", type=Path, default=Path("var/data"))
    ap.add_argument("--steps", default="1000,5000", help="teacher steps of the extra runs, comma-separated")
    ap.add_argument("--open-baskets", type=int, default=1)
    ap.add_argument(
        "--accept-signal-set", metavar="SET", help="measure a run trained on this older signal set (no training)"
    )
    ap.add_argument(
        "--half-life-days",
        type=float,
        help="the live tables' half-life the run was trained with, when it differs from today's default",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError as exc:
        raise SystemExit(f"--steps is a comma-separated list of step counts, e.g. 1000,5000: {exc}") from exc
    if not steps or min(steps) < 1:
        raise SystemExit(f"--steps needs positive step counts, got {args.steps!r}")
    params = None if args.half_life_days is None else LiveParams(half_life_days=args.half_life_days)
    result = text_curve(
        args.run, args.data, steps, args.open_baskets, accept_signals=args.accept_signal_set, params=params
    )
    print(json.dumps(asdict(result), indent=2) if args.json else result.format())


if __name__ == "__main__":
    main()
