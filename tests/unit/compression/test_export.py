"""Offline model jobs: training pairs, fine-tuning, ONNX export and the artifact it writes."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from rankstream.compression.distil import TrainConfig, train_listwise
from rankstream.compression.export import REFERENCE_PAIRS, export_onnx
from rankstream.compression.pairs import LabelledPair, make_groups
from rankstream.compression.train import TRAINING_LOG
from rankstream.stream.artifact import load_manifest
from rankstream.stream.errors import ArtifactError
from rankstream.stream.features import PAIR_FORMAT, history_text
from rankstream.stream.ranker import PairEncoder, Ranker
from tests.model_builders import CATALOG, Inst

# Torch vs the optimized fp32 ONNX graph (fused attention, LayerNorm, GELU): float reassociation only.
FP32_ATOL = 1e-4
# Per-channel INT8 vs fp32 on the tiny wide-init model (scores ~0.5-1.2): measured max ~0.04.
INT8_ATOL = 0.1


def _fresh_pairs(n: int = 24, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = "red blue heart cake stand jumbo bag vintage paper chain kit candle holder glass star".split()
    return [
        (
            history_text([" ".join(rng.sample(words, rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]),
            " ".join(rng.sample(words, rng.randint(1, 4))),
        )
        for _ in range(n)
    ]


def make_pairs(instances, catalog, **kwargs):  # type: ignore[no-untyped-def]
    """The training lists' pairs, one list after another."""
    return [p for g in make_groups(instances, catalog, **kwargs) for p in g]


# --- pairs -----------------------------------------------------------------------------------------


def test_pairs_label_listed_positives_with_their_candidate_position() -> None:
    inst = Inst(("i1", "i2"), ("i3", "i4", "i5", "i6"), frozenset({"i5", "i9", "i8"}))
    pairs = make_pairs([inst], CATALOG, neg_per_instance=4)
    query = history_text(["Item 1 title", "Item 2 title"])
    assert all(p.query == query for p in pairs)
    positives = [p.candidate for p in pairs if p.label == 1.0]
    # i8 and i9 were chosen but never proposed: the scorer could not see them, so they teach nothing.
    assert positives == ["3 | item 5 title"]
    negatives = [p.candidate for p in pairs if p.label == 0.0]
    assert negatives == ["1 | item 3 title", "2 | item 4 title", "4 | item 6 title"]  # all the non-positives


def test_pairs_take_top_negatives_then_random_ones_deterministically() -> None:
    inst = Inst(("i0",), tuple(f"i{n}" for n in range(1, 16)), frozenset({"i1"}))
    a = make_pairs([inst], CATALOG, neg_per_instance=4, seed=3)
    negatives = [p.candidate for p in a if p.label == 0.0]
    assert len(negatives) == 4
    assert negatives[:2] == ["2 | item 2 title", "3 | item 3 title"]  # the top of the list, positives excluded
    assert make_pairs([inst], CATALOG, neg_per_instance=4, seed=3) == a
    draws = {tuple(p.candidate for p in make_pairs([inst], CATALOG, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the random part does depend on the seed


def test_pairs_skip_untitled_items_and_empty_instances() -> None:
    instances = [
        Inst(("nope",), ("i1",), frozenset({"i1"})),  # no titled history
        Inst(("i1",), ("i2", "i3"), frozenset({"gone"})),  # no titled positive
        Inst(("i1", "nope"), ("i2", "x", "i3"), frozenset({"i2"})),
    ]
    pairs = make_pairs(instances, CATALOG)
    # Positions count only titled candidates, as the scorer numbers them ("x" has no title).
    assert pairs == [
        LabelledPair("item 1 title", "1 | item 2 title", 1.0),
        LabelledPair("item 1 title", "2 | item 3 title", 0.0),
    ]


def test_pairs_carry_their_candidates_signal_rows_in_scorer_order() -> None:
    inst = Inst(("i1",), ("i2", "x", "i3", "i4"), frozenset({"i3"}))
    rows = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=np.float32)  # i2, i3, i4 ("x" has no title)
    pairs = make_pairs([inst], CATALOG, neg_per_instance=2, signals=[rows])
    assert {p.candidate: p.signals for p in pairs} == {
        "2 | item 3 title": (2.0, 3.0),
        "1 | item 2 title": (0.0, 1.0),
        "3 | item 4 title": (4.0, 5.0),
    }
    with pytest.raises(ValueError, match="signal rows"):
        make_pairs([inst], CATALOG, signals=[rows[:2]])


# --- export ----------------------------------------------------------------------------------------


def test_fp32_export_matches_torch(tiny_bert_dir: Path, fp32_artifact: Path) -> None:
    pairs = _fresh_pairs()
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    encoded = PairEncoder(tiny_bert_dir / "tokenizer.json", 64).encode(pairs)
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.reshape(-1).numpy()
    got = Ranker.load(fp32_artifact, batch_size=7).score(pairs)  # other batches, other padding
    np.testing.assert_allclose(got, expected, rtol=0, atol=FP32_ATOL)
    assert np.ptp(expected) > 0.1  # not a constant model that would match anything


def test_int8_export_stays_close_to_fp32(fp32_artifact: Path, int8_artifact: Path) -> None:
    pairs = _fresh_pairs()
    fp32 = Ranker.load(fp32_artifact).score(pairs)
    int8 = Ranker.load(int8_artifact).score(pairs)
    np.testing.assert_allclose(int8, fp32, rtol=0, atol=INT8_ATOL)


def _rows(n: int, seed: int = 3) -> np.ndarray:
    from rankstream.stream.signals import SIGNALS

    return (np.random.default_rng(seed).normal(size=(n, len(SIGNALS.names))) * 3).astype(np.float32)


def test_fp32_export_with_signals_matches_torch(signal_bert_dir: Path, signal_fp32_artifact: Path) -> None:
    from rankstream.compression.model import load_cross_encoder

    pairs, rows = _fresh_pairs(), _rows(24)
    model = load_cross_encoder(signal_bert_dir).eval()
    encoded = PairEncoder(signal_bert_dir / "tokenizer.json", 64).encode(pairs)
    with torch.no_grad():
        feed = {k: torch.from_numpy(v) for k, v in encoded.items()} | {"signals": torch.from_numpy(rows)}
        expected = model(**feed).logits.reshape(-1).numpy()
        text_only = model(**(feed | {"signals": model.signal_mean.expand(24, -1)})).logits.reshape(-1).numpy()
    got = Ranker.load(signal_fp32_artifact, batch_size=7).score(pairs, rows)
    np.testing.assert_allclose(got, expected, rtol=0, atol=FP32_ATOL)
    assert np.ptp(expected - text_only) > 1.0  # the head moves scores
    assert np.ptp(text_only) > 0.1  # and so does the text


def test_int8_export_with_signals_keeps_the_head_fp32(signal_fp32_artifact: Path, signal_int8_artifact: Path) -> None:
    import onnx

    pairs, rows = _fresh_pairs(), _rows(24)
    fp32 = Ranker.load(signal_fp32_artifact).score(pairs, rows)
    int8 = Ranker.load(signal_int8_artifact).score(pairs, rows)
    np.testing.assert_allclose(int8, fp32, rtol=0, atol=INT8_ATOL)
    graph = onnx.load(str(signal_int8_artifact / "model.onnx")).graph
    head = [n for n in graph.node if any(x == "signals" or "signal_" in x for x in n.input)]
    assert {n.op_type for n in head} == {"Sub", "Mul"}  # no quantize/dequantize on the head's path
    assert any(n.op_type == "MatMulInteger" or n.op_type == "DynamicQuantizeMatMul" for n in graph.node)


def test_export_refuses_a_model_trained_on_another_signal_set(signal_bert_dir: Path, tmp_path: Path) -> None:
    import shutil

    d = Path(shutil.copytree(signal_bert_dir, tmp_path / "old"))
    config = json.loads((d / "config.json").read_text())
    config["rankstream_signals"]["version"] = "covisit-pop-8-v0"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="trained on signal set 'covisit-pop-8-v0'"):
        export_onnx(d, tmp_path / "art", version="x", quantize="none")


def test_manifest_records_the_export(fp32_artifact: Path, int8_artifact: Path) -> None:
    m = load_manifest(int8_artifact)
    assert m.method_chain == (
        "finetune:tiny-random-bert",
        "onnx:legacy-eager",
        "ort-optimize:fused-attention",
        "unfuse:skip-layernorm,bias-gelu",
        "quantize:int8-dynamic-per-channel-7bit",
    )
    assert m.input_spec.pair_format == PAIR_FORMAT and m.input_spec.max_length == 64
    assert m.metrics["ndcg@10"] == 0.5
    assert m.metrics["export_fp32_max_abs_diff"] <= FP32_ATOL
    assert [list(p) for p in m.reference.pairs] == [list(p) for p in REFERENCE_PAIRS]
    assert load_manifest(fp32_artifact).method_chain[-1] == "unfuse:skip-layernorm,bias-gelu"
    assert not list(int8_artifact.parent.glob(".*partial*"))  # nothing left behind


def test_export_refuses_to_overwrite_a_version(tiny_bert_dir: Path, fp32_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="immutable"):
        export_onnx(tiny_bert_dir, fp32_artifact, version="again", quantize="none")


# --- training and the whole build ------------------------------------------------------------------


def _labelled(n: int = 64) -> list[LabelledPair]:
    return [LabelledPair(q, c, float(i % 3 == 0)) for i, (q, c) in enumerate(_fresh_pairs(n, seed=2))]


def _lists(pairs: list[LabelledPair], size: int = 8) -> list[list[LabelledPair]]:
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def test_listwise_training_updates_weights_and_saves_a_checkpoint(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=3, groups_per_batch=2, lr=1e-3)
    out = train_listwise(tiny_bert_dir, tmp_path / "ft", _lists(_labelled()), config)
    stats = json.loads((out / TRAINING_LOG).read_text())
    assert stats["steps"] == 3 and stats["pairs_seen"] == 48
    before = BertForSequenceClassification.from_pretrained(tiny_bert_dir).classifier.weight
    after = BertForSequenceClassification.from_pretrained(out).classifier.weight
    assert not torch.equal(before, after)
    assert (out / "tokenizer.json").is_file()


def test_listwise_training_trains_a_model_with_signals(signal_bert_dir: Path, tmp_path: Path) -> None:
    from rankstream.compression.model import load_cross_encoder

    rows = _rows(64)
    pairs = [p._replace(signals=tuple(float(v) for v in r)) for p, r in zip(_labelled(), rows, strict=True)]
    out = train_listwise(signal_bert_dir, tmp_path / "ft", _lists(pairs), TrainConfig(steps=2, lr=1e-2))
    before, after = load_cross_encoder(signal_bert_dir), load_cross_encoder(out)
    assert not torch.equal(before.signal_weight, after.signal_weight)
    assert torch.equal(before.signal_mean, after.signal_mean)  # standardisation is fixed, not trained


@pytest.mark.slow
def test_build_artifact_tiny_preset_with_a_signal_head(tmp_path: Path) -> None:
    from rankstream.compression.signal_head import SignalHead
    from rankstream.jobs.build import build_artifact
    from rankstream.jobs.presets import tiny
    from rankstream.stream.signals import SIGNALS

    n = len(SIGNALS.names)
    head = SignalHead(SIGNALS.version, SIGNALS.names, (0.0,) * n, (1.0,) * n, (0.5,) * n)
    rows = _rows(64)
    pairs = [p._replace(signals=tuple(float(v) for v in r)) for p, r in zip(_labelled(), rows, strict=True)]
    artifact = build_artifact(
        _lists(pairs), tmp_path / "registry", version="v-sig", preset=tiny(), prior=[0.1, 0.0], head=head
    )
    ranker = Ranker.load(artifact)
    assert ranker.signals == SIGNALS.version
    chain = f"finetune-listwise:tiny-random-bert+position-prior+signal-head:{SIGNALS.version}"
    assert ranker.manifest.method_chain[0] == chain
    assert ranker.score(_fresh_pairs(5), rows[:5]).shape == (5,)


@pytest.mark.slow
def test_build_artifact_tiny_preset_end_to_end(tmp_path: Path) -> None:
    from rankstream.jobs.build import build_artifact
    from rankstream.jobs.presets import tiny

    artifact = build_artifact(_lists(_labelled()), tmp_path / "registry", version="v-build", preset=tiny())
    assert artifact == tmp_path / "registry" / "v-build"
    ranker = Ranker.load(artifact)
    assert ranker.manifest.metrics["train_steps"] == tiny().teacher.steps
    assert ranker.manifest.method_chain[0] == "finetune-listwise:tiny-random-bert+position-prior"
    assert ranker.score(_fresh_pairs(5)).shape == (5,)


def test_static_int8_export_is_batch_invariant_and_keeps_the_head_fp32(
    signal_bert_dir: Path, signal_fp32_artifact: Path, tmp_path: Path
) -> None:
    import onnx

    rows = _rows(48)
    calibration = [
        [p._replace(signals=tuple(float(v) for v in r)) for p, r in zip(g, rows[i * 8 : i * 8 + 8], strict=True)]
        for i, g in enumerate(_lists(_labelled(48)))
    ]
    art = export_onnx(signal_bert_dir, tmp_path / "s", version="v-s", quantize="int8-static", calibration=calibration)
    m = load_manifest(art)
    assert m.method_chain[-1] == "quantize:int8-static-qdq-per-channel" and m.input_spec.batch_invariant
    assert m.metrics["export_batch_max_abs_diff"] <= 1e-5 and m.metrics["export_int8_max_abs_diff"] < INT8_ATOL
    pairs, test_rows = _fresh_pairs(), _rows(24, seed=4)
    fp32 = Ranker.load(signal_fp32_artifact).score(pairs, test_rows)
    np.testing.assert_allclose(Ranker.load(art).score(pairs, test_rows), fp32, rtol=0, atol=INT8_ATOL)
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops  # activations calibrated, not measured
    head = [n for n in graph.node if any(x == "signals" or "signal_" in x for x in n.input)]
    assert {n.op_type for n in head} == {"Sub", "Mul"}
    assert load_manifest(signal_fp32_artifact).input_spec.batch_invariant  # fp32 is invariant too
    with pytest.raises(ValueError, match="calibration lists"):
        export_onnx(signal_bert_dir, tmp_path / "t", version="v-t", quantize="int8-static")
