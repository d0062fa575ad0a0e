"""Bi-encoder export: the graph is the sentence embedding torch computes, the manifest says what it is, and
the reference vectors are what the loader gives each title."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.compression.embed import embed_texts, mean_pool
from rankstream.compression.encoder_export import INT8_CHAIN, REFERENCE_TITLES, export_encoder, pool_unit
from rankstream.stream.artifact import MANIFEST, sha256_file
from rankstream.stream.encoder import SCHEMA_VERSION, EncoderManifest, TextEncoder
from rankstream.stream.errors import ArtifactError

# Titles of under 32 tokens, so that no truncation separates the artifact from the torch reference.
TITLES = ["Red retrospot cake stand", "Jumbo storage bag suki", "Candle", "Paper chain kit 50's christmas", ""]


def test_fp32_vectors_are_torch_sentence_embeddings(encoder_fp32_artifact: Path, tiny_encoder_dir: Path) -> None:
    got = TextEncoder.load(encoder_fp32_artifact).encode(TITLES)
    # compression.embed pads a batch and pools in torch: only float reassociation separates the two.
    np.testing.assert_allclose(got, embed_texts(TITLES, tiny_encoder_dir), atol=1e-5)


def test_int8_vectors_point_where_torch_points(encoder_int8_artifact: Path, tiny_encoder_dir: Path) -> None:
    got = TextEncoder.load(encoder_int8_artifact).encode(TITLES)
    cosine = np.sum(got * embed_texts(TITLES, tiny_encoder_dir), axis=1)
    assert cosine.min() > 0.99, cosine


def test_int8_quantizes_the_matrix_products_and_keeps_the_embedding_tables_fp32(encoder_int8_artifact: Path) -> None:
    graph = onnx.load(str(encoder_int8_artifact / "model.onnx")).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8, "nothing was quantized"
    assert all("embeddings" not in i.name for i in int8), [i.name for i in int8]
    tables = [i for i in graph.initializer if "word_embeddings" in i.name]
    assert tables and all(i.data_type == onnx.TensorProto.FLOAT for i in tables)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_manifest_describes_the_artifact(which: str, encoder_fp32_artifact: Path, encoder_int8_artifact: Path) -> None:
    directory = encoder_fp32_artifact if which == "fp32" else encoder_int8_artifact
    raw = json.loads((directory / MANIFEST).read_text())
    m = EncoderManifest.model_validate(raw)
    assert raw["kind"] == "bi-encoder" and m.schema_version == SCHEMA_VERSION
    assert m.version == f"e-tiny-{'none' if which == 'fp32' else 'int8'}"
    assert (m.dim, m.max_length) == (32, 32)
    assert m.files == {name: sha256_file(directory / name) for name in ("model.onnx", "tokenizer.json")}
    assert m.method_chain[:3] == ("random-init:tiny-bert", "bi-encoder:mean-pool-l2", "onnx:legacy-eager")
    assert (m.method_chain[-1] == INT8_CHAIN) == (which == "int8")
    assert m.metrics["recall@50"] == 0.25
    assert m.metrics["export_fp32_max_abs_diff"] <= 1e-4
    assert ("export_int8_min_cosine" in m.metrics) == (which == "int8")
    assert m.reference.titles == REFERENCE_TITLES
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_reference_vectors_are_what_the_loader_gives_each_title(
    which: str, encoder_fp32_artifact: Path, encoder_int8_artifact: Path
) -> None:
    encoder = TextEncoder.load(encoder_fp32_artifact if which == "fp32" else encoder_int8_artifact)
    ref = encoder.manifest.reference
    np.testing.assert_array_equal(encoder.encode(ref.titles), np.asarray(ref.vectors, dtype=np.float32))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ref.vectors), axis=1), 1.0, atol=1e-5)


def test_fp32_graph_is_batch_invariant(encoder_fp32_artifact: Path) -> None:
    # INT8's figure is not pinned: how far dynamic scales move a vector depends on the batch and the CPU.
    assert TextEncoder.load(encoder_fp32_artifact).manifest.metrics["export_batch_max_abs_diff"] <= 1e-5


def test_long_titles_are_truncated_at_max_length(encoder_fp32_artifact: Path) -> None:
    encoder = TextEncoder.load(encoder_fp32_artifact)
    # 40 one-piece words + [CLS] + [SEP] overflow the 32 tokens; whatever follows them is cut.
    words = "cake " * 40
    a, b = encoder.encode([words + "red stand", words + "blue jumbo bag"])
    np.testing.assert_array_equal(a, b)


def test_an_existing_version_is_never_overwritten(encoder_fp32_artifact: Path, tiny_encoder_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        export_encoder(tiny_encoder_dir, encoder_fp32_artifact, reference_titles=TITLES, version="again")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4"}, "quantize must be one of"),
        ({"reference_titles": []}, "reference_titles is empty"),
        ({"max_length": 4096}, "max_length 4096 is outside"),
        ({"version": ""}, "version is empty"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    kwargs: dict[str, object], message: str, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    args: dict[str, object] = {"reference_titles": TITLES, "version": "v"} | kwargs
    with pytest.raises(ValueError, match=message):
        export_encoder(tiny_encoder_dir, tmp_path / "out", **args)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_refused_export_leaves_nothing_behind(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    # No float graph matches torch to 0: the fp32 check refuses the export after the graph is written.
    with pytest.raises(ArtifactError, match="differs from torch"):
        export_encoder(
            tiny_encoder_dir, tmp_path / "out", quantize="none", reference_titles=TITLES, version="v", fp32_atol=0.0
        )
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_without_tokenizer_json_is_refused(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    # transformers would build a tokenizer with no words from it, and every title would be [UNK]s.
    model = Path(shutil.copytree(tiny_encoder_dir, tmp_path / "model"))
    (model / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        export_encoder(model, tmp_path / "out", reference_titles=TITLES, version="v")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_tokenizer_with_ids_beyond_the_embedding_table_is_refused(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, BertModel

    model = tmp_path / "model"
    BertModel(AutoConfig.from_pretrained(tiny_encoder_dir, vocab_size=1000)).save_pretrained(model)
    shutil.copyfile(tiny_encoder_dir / "tokenizer.json", model / "tokenizer.json")  # MiniLM's 30,522 tokens
    with pytest.raises(ValueError, match="has 30522 tokens, the model's embedding table 1000"):
        export_encoder(model, tmp_path / "out", reference_titles=TITLES, version="v")


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 4),
    tokens=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_the_graphs_pooling_gives_mean_pools_unit_vectors(rows: int, tokens: int, seed: int, scale: float) -> None:
    # Any hidden states and any padding (each row keeps at least its first token, as [CLS] always is).
    rng = np.random.default_rng(seed)
    hidden = torch.from_numpy(rng.normal(size=(rows, tokens, 8)).astype(np.float32) * scale)
    lengths = rng.integers(1, tokens + 1, size=rows)
    mask = torch.from_numpy((np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64))
    np.testing.assert_allclose(pool_unit(hidden, mask).numpy(), mean_pool(hidden, mask).numpy(), atol=1e-5)
