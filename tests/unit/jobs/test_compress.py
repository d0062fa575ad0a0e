"""The compression pipeline: listwise training and distillation, layer dropping, the gate, compress/bench."""

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rankstream.compression.gate import accuracy_gate
from rankstream.compression.pairs import LabelledPair, make_groups
from rankstream.data.split import Split
from rankstream.evaluation.evalset import EvalSet, throughput
from rankstream.jobs.presets import COMPRESS, RecompressPreset, compress_preset, recompress_fast
from rankstream.stream.errors import ConfigError, JobError
from tests.model_builders import CATALOG, Inst, byo_data, evenly_spaced, variant, write_run


def _groups(n: int = 6, size: int = 5, seed: int = 0) -> list[list[LabelledPair]]:
    rng = random.Random(seed)
    out = []
    for g in range(n):
        query = f"item {g} title | item {g + 1} title"
        out.append([LabelledPair(query, f"{r} | item {rng.randint(0, 19)} title", float(r == 0)) for r in range(size)])
    return out


def test_groups_keep_one_list_per_instance_positives_first() -> None:
    insts = [Inst(("i1",), ("i3", "i4", "i5", "i6"), frozenset({"i5"})), Inst(("i2",), ("i7", "i8"), frozenset({"i8"}))]
    groups = make_groups(insts, CATALOG, neg_per_instance=2)
    assert [len(g) for g in groups] == [3, 2]
    assert [p.label for p in groups[0]] == [1.0, 0.0, 0.0]
    assert groups[0][0].candidate == "3 | item 5 title"


def test_layers_kept_are_spread_and_include_first_and_last() -> None:
    assert evenly_spaced(6, 4) == [0, 2, 3, 5]
    assert evenly_spaced(6, 2) == [0, 5]
    assert evenly_spaced(6, 6) == list(range(6))
    with pytest.raises(ValueError):
        evenly_spaced(6, 7)


def test_gate_passes_within_tolerance_and_rejects_below() -> None:
    assert accuracy_gate(0.198, 0.200, tolerance=0.02).passed
    degraded = accuracy_gate(0.150, 0.200, tolerance=0.02)
    assert not degraded.passed and "outside" in degraded.reason
    assert not accuracy_gate(float("nan"), 0.2, tolerance=0.02).passed
    with pytest.raises(ConfigError):
        accuracy_gate(0.2, 0.2, tolerance=1.5)


def test_gate_rejects_a_deliberately_degraded_student_on_measured_ndcg() -> None:
    """Quality comes from ranking real lists: a student that scores at random fails the gate."""
    lists = tuple(tuple((f"q{u}", f"{r} | c{r}") for r in range(20)) for u in range(30))
    cands = tuple(tuple(f"c{r}" for r in range(20)) for _ in range(30))
    rng = np.random.default_rng(0)
    relevant = tuple(frozenset({f"c{rng.integers(5, 20)}"}) for _ in range(30))
    evalset = EvalSet("valid", 30, lists, cands, relevant, cands)
    truth = {(u, f"c{r}") for u, rel in enumerate(relevant) for r in range(20) if f"c{r}" in rel}

    def teacher(ls: object) -> list[np.ndarray]:
        return [np.array([float((u, f"c{r}") in truth) for r in range(20)]) for u in range(30)]

    def degraded(ls: object) -> list[np.ndarray]:
        return [rng.normal(size=20) for _ in range(30)]

    t, d = evalset.quality(teacher)["ndcg@10"], evalset.quality(degraded)["ndcg@10"]
    assert t == pytest.approx(1.0)
    assert accuracy_gate(t, t, tolerance=0.02).passed
    assert not accuracy_gate(d, t, tolerance=0.02).passed


def test_throughput_reports_rate_and_percentiles() -> None:
    got = throughput(lambda b: np.zeros(len(b)), [("a", "b")] * 70, batch_size=32)
    assert got["batches"] == 3 and got["pairs_per_s"] > 0 and got["p99_batch_ms"] >= got["p50_batch_ms"]
    seen = []
    rows = np.arange(70, dtype=np.float32)[:, None]
    throughput(lambda b, s: seen.append((len(b), s[0, 0])) or np.zeros(len(b)), [("a", "b")] * 70, signals=rows)
    assert seen[-3:] == [(32, 0.0), (32, 32.0), (6, 64.0)]  # each batch with its own rows


def test_evalset_lists_carry_the_scorers_signals_and_pass_them_to_the_model() -> None:
    from rankstream.stream.signals import ItemStats, candidate_signals

    insts = [Inst(("i1", "i2"), ("i3", "ghost", "i4"), frozenset({"i4"})), Inst(("i5",), ("i6",), frozenset({"x"}))]
    nb = {"i1": ["i3", "i4"], "i4": ["i2"]}
    stats = {"i3": ItemStats(baskets=5, buyers=2)}
    rows = [candidate_signals(i.history, [c for c in i.candidates if c in CATALOG], nb, stats, CATALOG) for i in insts]
    evalset = EvalSet.from_instances("valid", insts, CATALOG, {}, signals=rows)
    assert evalset.signals is not None and len(evalset.signals) == 1  # the second one is not rankable
    np.testing.assert_array_equal(evalset.signals[0], candidate_signals(("i1", "i2"), ["i3", "i4"], nb, stats, CATALOG))
    with pytest.raises(ValueError, match="1 signal matrices for 2 instances"):
        EvalSet.from_instances("valid", insts, CATALOG, {}, signals=rows[:1])
    got: list[object] = []

    def score_lists(lists: object, signals: object) -> list[np.ndarray]:
        got.append(signals)
        return [np.array([0.0, 1.0])]

    assert evalset.quality(score_lists)["ndcg@10"] == pytest.approx(1.0)
    assert got == [evalset.signals]
    speed_rows = evalset.speed_signals(1)
    assert speed_rows is not None and speed_rows.shape == (1, 8)
    assert EvalSet.from_instances("valid", insts, CATALOG, {}).signals is None


def test_signal_head_fit_finds_the_signal_that_ranks_positives() -> None:
    from rankstream.compression.signal_head import fit_signal_head

    rng = np.random.default_rng(0)
    lists = []
    for _ in range(200):
        x = rng.normal(size=(10, 3)) * [1.0, 5.0, 1.0] + [0.0, 10.0, 0.0]
        y = np.zeros(10)
        y[int(np.argmax(x[:, 1] + rng.normal(size=10)))] = 1.0  # signal 1 (wide, offset) decides
        lists.append((x, y, np.zeros(10)))
    lists.append((rng.normal(size=(4, 3)), np.zeros(4), np.zeros(4)))  # no positive: skipped
    head = fit_signal_head(lists, version="v", names=("a", "b", "c"), l2=1e-3)
    assert head.mean[1] == pytest.approx(10.0, abs=0.5) and head.scale[1] == pytest.approx(0.2, rel=0.1)
    assert head.weight[1] > 1.0 and abs(head.weight[0]) < 0.3 and abs(head.weight[2]) < 0.3
    x, y, _ = lists[0]
    assert int(np.argmax(head.score(x))) == int(np.argmax(x[:, 1]))


@pytest.mark.slow
def test_distil_drop_layers_export_and_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4-layer tiny teacher -> 2-layer student distilled from its scores -> INT8 artifact the ranker loads;
    a killed distillation resumes from its checkpoint."""
    import rankstream.compression.distil as distil
    from rankstream.compression.export import export_onnx
    from rankstream.compression.tiny import tiny_bert
    from rankstream.stream.ranker import Ranker

    teacher = tiny_bert(tmp_path / "teacher", seed=0, num_layers=4)
    groups = _groups()
    config = distil.TrainConfig(steps=4, groups_per_batch=1, lr=1e-3, checkpoint_every=2)
    init = distil.drop_layers(teacher, tmp_path / "init", evenly_spaced(4, 2))
    assert json.loads((init / "config.json").read_text())["num_hidden_layers"] == 2
    scores = [np.linspace(1.0, -1.0, len(g)) for g in groups]

    calls = {"n": 0}
    real = distil._targets

    def crash_on_third_step(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(distil, "_targets", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        distil.train_listwise(init, tmp_path / "student", groups, config, teacher_scores=scores)
    assert (tmp_path / "student" / distil.CHECKPOINT / "state.pt").exists()
    monkeypatch.setattr(distil, "_targets", real)
    student = distil.train_listwise(init, tmp_path / "student", groups, config, teacher_scores=scores)
    stats = json.loads((student / "training.json").read_text())
    assert stats["steps"] == 4 and stats["mode"] == "scores" and not (student / distil.CHECKPOINT).exists()
    assert distil.count_params(student) < distil.count_params(teacher)

    # export_onnx refuses a graph further than 1e-4 from torch; the INT8 artifact passes the ranker's checks.
    artifact = export_onnx(student, tmp_path / "art", version="v-student", quantize="int8", fp32_atol=1e-4)
    ranker = Ranker.load(artifact)
    got = ranker.score_lists([[(p.query, p.candidate) for p in groups[0]]])[0]
    assert got.shape == (len(groups[0]),) and np.isfinite(got).all()


@pytest.mark.slow
def test_compress_tiny_end_to_end_then_bench(tmp_path: Path) -> None:
    from rankstream.bench.model import bench_model, format_bench
    from rankstream.data.prepare import prepare
    from rankstream.jobs.compress import compress
    from rankstream.jobs.runs import CompressRunRecord

    data = tmp_path / "data"
    prepare(byo_data(tmp_path / "src"), data, Split("2024-01-22", "2024-02-01"))
    root = compress(data, tmp_path / "runs", "tiny")
    for name in ("report.json", "report.md", "pareto.png"):
        assert (root / name).stat().st_size > 0
    report = json.loads((root / "report.json").read_text())
    names = {v["variant"] for v in report["variants"]}
    assert names >= {
        "signals-linear-fp32",
        "student-l1-ffn50-int8",
        "teacher-fp32",
        "teacher-int8",
        "student-l2-fp32",
        "student-l2-int8",
        "student-l1-fp32",
        "student-l1-int8",
    }
    assert "covisit" in report["baselines_valid"]
    fallback = next(v for v in report["variants"] if v["variant"] == "student-l2-int8-fallback")
    assert "int8-fallback:fp32-layers:" in fallback["chain"]
    assert (root / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every graph, fallbacks and trials included, is exported at the preset's length, as it was trained.
    manifests = list((root / "artifacts").glob("*/manifest.json")) + list((root / "work").rglob("manifest.json"))
    assert len(manifests) > len(names)
    assert {json.loads(m.read_text())["input_spec"]["max_length"] for m in manifests} == {
        compress_preset("tiny").max_length
    }

    # A second run resumes: nothing is retrained, the same artifacts are kept.
    before = CompressRunRecord.load(root).timings_s["teacher_train"]
    compress(data, tmp_path / "runs", "tiny")
    assert CompressRunRecord.load(root).timings_s["teacher_train"] < before + 0.5

    result = bench_model(root, data, split="test", max_instances=None, torch_eager=True)
    assert set(result["variants"]) == names and result["variants"]["teacher-fp32"]["speedup_vs_teacher"] == 1.0
    assert "teacher_torch_eager" in result and "covisit order" in format_bench(result)
    # Students carry their linear part, so the bench also ranks with only its top candidates cross-encoded.
    reranked = result["rerank_top"]["variants"]
    assert set(reranked) == {n for n in names if n.startswith("student-")}
    assert all(0.0 <= r["ndcg@10"] <= 1.0 and r["lists_speedup"] > 0 for r in reranked.values())
    assert "cross-encoding only the top 20" in format_bench(result)

    # The text's learning curve: the teacher retrained from the run's start for 2 steps, beside the run's 6.
    from rankstream.bench.text_curve import text_curve

    init = root / "work" / "teacher-init"
    original = load_file(init / "model.safetensors")
    shutil.rmtree(init)  # a run folder that lost its start: rebuilt from the rebuilt lists, as compress built it
    curve = text_curve(root, data, [2])
    rebuilt = load_file(init / "model.safetensors")
    assert original.keys() == rebuilt.keys() and all(torch.equal(original[k], rebuilt[k]) for k in original)
    assert [p.steps for p in curve.points] == [2, 6] and curve.train_groups == CompressRunRecord.load(root).train_groups
    retrained = root / "curve" / "teacher-2"
    assert json.loads((retrained / "training.json").read_text())["steps"] == 2
    for p in curve.points:
        for s in (p.baskets, p.open_baskets):
            assert s is not None and 0.0 <= s.with_text <= 1.0 and 0.0 <= s.without_text <= 1.0
            if s.without_text > 0:  # the paired ratio over all baskets is the ratio of the two means
                assert s.ratio == pytest.approx(s.with_text / s.without_text)
    assert "text gain of tiny's teacher" in curve.format()
    record = CompressRunRecord.load(root)
    record.train_groups += 1
    record.save(root)
    with pytest.raises(ConfigError, match="rebuilt .* training lists"):
        text_curve(root, data, [3])  # a run to train: its lists must be the compress run's
    assert [p.steps for p in text_curve(root, data, [2]).points] == [2, 6]  # nothing to train: measured as is


def test_a_preset_trains_and_serves_one_length() -> None:
    for name in COMPRESS:
        preset = compress_preset(name)
        assert preset.teacher.max_length == preset.student.max_length == preset.max_length
    fast = compress_preset("fast")
    assert fast.max_length == 32  # the demo's model: the cheaper pair a CPU without VNNI needs
    with pytest.raises(ConfigError, match="student trains at 64 tokens per pair but the preset serves 32"):
        replace(fast, student=replace(fast.student, max_length=64))


def test_presets_train_on_one_kind_of_list_and_refuse_unknown_targets() -> None:
    # Every compress preset and the recompress cycle fit the same lists, so a cycle learns what it replaces.
    kinds = {(compress_preset(name).open_baskets, compress_preset(name).open_target) for name in COMPRESS}
    assert kinds == {(recompress_fast().open_baskets, recompress_fast().open_target)} == {(1, "rest")}
    tiny = compress_preset("tiny")
    with pytest.raises(ConfigError, match="open_target is one of"):
        replace(tiny, open_target="all")
    with pytest.raises(ConfigError, match="count of open states"):
        replace(tiny, open_baskets=-1)
    with pytest.raises(ConfigError, match="open_target is one of"):
        RecompressPreset(open_target="every")  # type: ignore[arg-type]


def test_compression_public_surface_is_pinned() -> None:
    import rankstream.compression

    assert sorted(rankstream.compression.__all__) == [
        "GateResult",
        "LabelledPair",
        "PositionPriorBert",
        "SignalHead",
        "TrainConfig",
        "accuracy_gate",
        "drop_layers",
        "export_onnx",
        "fit_signal_head",
        "load_cross_encoder",
        "make_groups",
        "prune_ffn",
        "teacher_scores",
        "train_listwise",
    ]
    assert all(hasattr(rankstream.compression, n) for n in rankstream.compression.__all__)


def test_cli_has_compress_and_bench_model() -> None:
    from rankstream.cli.main import build_parser

    args = build_parser().parse_args(["compress", "--preset", "fast"])
    assert args.preset == "fast" and not args.restart
    args = build_parser().parse_args(["bench", "model", "--json", "--split", "valid"])
    assert args.bench_cmd == "model" and args.json and args.split == "valid"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench"])


def test_position_prior_follows_click_rates_and_moves_scores(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    from rankstream.compression.model import load_cross_encoder, position_prior, with_position_prior
    from rankstream.stream.features import candidate_text
    from rankstream.stream.ranker import PairEncoder

    insts = [Inst((), ("a", "b", "c"), frozenset({"a"}))] * 9 + [Inst((), ("a", "b", "c"), frozenset({"c"}))]
    prior = position_prior(insts, {"a": "A", "b": "B", "c": "C"}, n_candidates=3)
    assert prior[0] > prior[2] > prior[1]

    out = with_position_prior(tiny_bert_dir, tmp_path / "prior", [5.0, 0.0, -5.0])
    model = load_cross_encoder(out).eval()
    enc = PairEncoder(out / "tokenizer.json", 64).encode([("red cake", candidate_text("stand", r)) for r in range(3)])
    with torch.no_grad():
        scores = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.reshape(-1)
    # Same title at three positions: the prior's 5-point steps dominate the tiny model's own spread.
    assert scores[0] > scores[1] > scores[2] and float(scores[0] - scores[2]) > 8


def test_trimmed_vocabulary_scores_catalog_pairs_identically(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    from rankstream.compression.model import load_cross_encoder, with_position_prior
    from rankstream.compression.vocab import catalog_texts, trim_vocab
    from rankstream.stream.features import candidate_text, history_text
    from rankstream.stream.ranker import PairEncoder

    titles = ["Red retrospot cake stand", "Jumbo bag pink polkadot", "Regency cakestand 3 tier", "Paper chain kit"]
    src = with_position_prior(tiny_bert_dir, tmp_path / "prior", [0.5, -0.5, 0.0, 1.0])
    out = trim_vocab(src, tmp_path / "trimmed", catalog_texts(titles, n_positions=4))
    pairs = [(history_text(titles[:2]), candidate_text(t, r)) for r, t in enumerate(titles)]

    def scores(d: Path) -> tuple[np.ndarray, int]:
        enc = PairEncoder(d / "tokenizer.json", 64).encode(pairs)
        model = load_cross_encoder(d).eval()
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.reshape(-1).numpy()
        return logits, model.config.vocab_size

    (before, n_before), (after, n_after) = scores(src), scores(out)
    assert n_after < 200 < n_before
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_roberta_style_pair_template_gets_segment_b_marked(tmp_path: Path) -> None:
    """MPNet's tokenizer gives every token type 0; the position prior needs segment B marked, ids unchanged."""
    from tokenizers import Tokenizer, processors

    from rankstream.compression.model import mark_pair_segments
    from rankstream.compression.train import minilm_path
    from rankstream.stream.ranker import PairEncoder

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.post_processor = processors.RobertaProcessing(("[SEP]", 102), ("[CLS]", 101))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    pairs = [("red cake stand", "3 | blue mug"), ("a", "17 | b")]
    before = PairEncoder(path, 64).encode(pairs)
    assert before["token_type_ids"].max() == 0
    mark_pair_segments(path)
    after = PairEncoder(path, 64).encode(pairs)
    np.testing.assert_array_equal(after["input_ids"], before["input_ids"])
    first = after["token_type_ids"].argmax(axis=1)
    assert [tok.id_to_token(int(after["input_ids"][i, f])) for i, f in enumerate(first)] == ["3", "17"]
    mark_pair_segments(path)  # idempotent: a template is left alone
    np.testing.assert_array_equal(PairEncoder(path, 64).encode(pairs)["token_type_ids"], after["token_type_ids"])


def test_best_student_is_the_fastest_that_passed_the_gate(tmp_path: Path) -> None:
    from rankstream.jobs.compress import best_student

    def record(role: str, passed: bool, speed: float):  # type: ignore[no-untyped-def]
        return variant(tmp_path / f"{role}-{speed}", tmp_path / "hf", role=role, passed=passed, speed=speed)

    variants = {
        "teacher-fp32": record("teacher", True, 50.0),
        "a": record("student", True, 900.0),
        "b": record("student (int8 per-layer fallback)", True, 1200.0),
        "c": record("student", False, 2000.0),
    }
    write_run(tmp_path, variants)
    assert best_student(tmp_path) == tmp_path / "student (int8 per-layer fallback)-1200.0"
    write_run(tmp_path, {"c": variants["c"]})
    with pytest.raises(JobError, match="no student .*passed the accuracy gate"):
        best_student(tmp_path)
