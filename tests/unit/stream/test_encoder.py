"""The bi-encoder loader: every check before it encodes, unit vectors that never depend on batch-mates, and
ArtifactError (never another exception) for whatever a manifest holds."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstream.stream.artifact import MANIFEST
from rankstream.stream.encoder import EncoderManifest, TextEncoder, read_encoder_manifest
from rankstream.stream.errors import ArtifactError, ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _rewrite(directory: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Change the manifest's JSON in place (the manifest is not among the hashed files)."""
    raw = json.loads((directory / MANIFEST).read_text())
    change(raw)
    (directory / MANIFEST).write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory, encoder_int8_artifact: Path) -> Iterator[Path]:
    """A private copy of the INT8 artifact whose manifest the property tests overwrite."""
    yield Path(shutil.copytree(encoder_int8_artifact, tmp_path_factory.mktemp("scratch") / "artifact"))


@pytest.fixture(scope="module")
def int8(encoder_int8_artifact: Path) -> TextEncoder:
    return TextEncoder.load(encoder_int8_artifact)


def test_encoder_module_does_not_import_torch() -> None:
    code = (
        "import sys, rankstream.stream.encoder; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_loads_and_encodes_unit_rows(which: str, encoder_fp32_artifact: Path, encoder_int8_artifact: Path) -> None:
    encoder = TextEncoder.load(encoder_fp32_artifact if which == "fp32" else encoder_int8_artifact, threads=2)
    assert encoder.version == f"e-tiny-{'none' if which == 'fp32' else 'int8'}" and encoder.dim == 32
    vectors = encoder.encode(["Red retrospot cake stand", "Candle", "Red retrospot cake stand"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    assert encoder.encode([]).shape == (0, 32)


def test_a_vector_does_not_depend_on_what_else_is_encoded(int8: TextEncoder) -> None:
    alone = int8.encode(["Jumbo bag red retrospot"])
    among = int8.encode(["a", "Set of 3 cake tins pantry design " * 5, "Jumbo bag red retrospot", ""])
    np.testing.assert_array_equal(among[2], alone[0])


def test_a_single_string_is_not_taken_for_a_list_of_characters(int8: TextEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of titles"):
        int8.encode("Candle")


def test_threads_below_one_is_a_config_error(encoder_int8_artifact: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        TextEncoder.load(encoder_int8_artifact, threads=0)


def test_a_changed_byte_in_the_graph_is_refused(encoder_int8_artifact: Path, artifact_copy: Any) -> None:
    d = artifact_copy(encoder_int8_artifact)
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match its sha256") as exc:
        TextEncoder.load(d)
    assert str(d) in str(exc.value)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_missing_file_is_refused(name: str, encoder_int8_artifact: Path, artifact_copy: Any) -> None:
    d = artifact_copy(encoder_int8_artifact)
    (d / name).unlink()
    with pytest.raises(ArtifactError, match=rf"{name.replace('.', '[.]')} is missing"):
        TextEncoder.load(d)


def test_no_manifest_is_refused(encoder_int8_artifact: Path, artifact_copy: Any) -> None:
    d = artifact_copy(encoder_int8_artifact)
    (d / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        TextEncoder.load(d)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(kind="cross-encoder"), "kind 'cross-encoder', this loader reads 'bi-encoder'"),
        (lambda m: m.pop("kind"), "kind None [(]no kind: a cross-encoder artifact[?][)]"),
        (lambda m: m.update(schema_version=2), "schema_version 2, this loader reads 1"),
        (lambda m: m.update(dim=16), "reference vectors of width"),
        (lambda m: m["files"].pop("tokenizer.json"), "tokenizer.json is not listed"),
        (lambda m: m["files"].update({"../model.onnx": "0" * 64}), "not a plain relative path"),
        (lambda m: m.update(surprise=1), "surprise"),
    ],
)
def test_a_wrong_manifest_is_refused_saying_what_is_wrong(
    change: Callable[[dict[str, Any]], object], message: str, encoder_int8_artifact: Path, artifact_copy: Any
) -> None:
    d = artifact_copy(encoder_int8_artifact)
    _rewrite(d, change)
    with pytest.raises(ArtifactError, match=message) as exc:
        TextEncoder.load(d)
    assert str(exc.value).startswith(f"{d}: refused")


def test_a_cross_encoder_artifact_is_refused(fp32_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="no kind: a cross-encoder artifact"):
        TextEncoder.load(fp32_artifact)


def test_a_tampered_reference_vector_is_refused(encoder_int8_artifact: Path, artifact_copy: Any) -> None:
    d = artifact_copy(encoder_int8_artifact)
    _rewrite(d, lambda m: m["reference"]["vectors"][1].__setitem__(0, m["reference"]["vectors"][1][0] + 0.01))
    with pytest.raises(ArtifactError, match=r"smoke test failed .* title 1 \('Jumbo bag red retrospot'\)"):
        TextEncoder.load(d)


def test_a_graph_of_another_dim_is_refused(
    encoder_int8_artifact: Path, tiny_encoder_dir: Path, artifact_copy: Any
) -> None:
    # The manifest says 16 and its vectors agree; the graph writes 32.
    d = artifact_copy(encoder_int8_artifact)
    _rewrite(
        d,
        lambda m: m.update(
            dim=16, reference={**m["reference"], "vectors": [v[:16] for v in m["reference"]["vectors"]]}
        ),
    )
    with pytest.raises(ArtifactError, match=r"graph output 'embedding' has shape \['batch', 32\], not \[batch, 16\]"):
        TextEncoder.load(d)


def test_a_max_length_beyond_the_graph_is_refused(encoder_int8_artifact: Path, artifact_copy: Any) -> None:
    # The tiny model has 128 positions: the reference titles fit, a title of 512 tokens does not.
    d = artifact_copy(encoder_int8_artifact)
    _rewrite(d, lambda m: m.update(max_length=512))
    with pytest.raises(ArtifactError, match="a title of max_length 512 tokens fails"):
        TextEncoder.load(d)


def test_a_graph_with_other_outputs_is_refused(
    encoder_int8_artifact: Path, int8_artifact: Path, artifact_copy: Any
) -> None:
    from rankstream.stream.artifact import sha256_file

    d = artifact_copy(encoder_int8_artifact)
    shutil.copyfile(int8_artifact / "model.onnx", d / "model.onnx")  # the cross-encoder's graph, hashes fixed
    _rewrite(d, lambda m: m["files"].update({"model.onnx": sha256_file(d / "model.onnx")}))
    with pytest.raises(ArtifactError, match="graph outputs \\['logits'\\] lack 'embedding'"):
        TextEncoder.load(d)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_manifest_load_or_are_refused(raw: bytes, scratch: Path) -> None:
    (scratch / MANIFEST).write_bytes(raw)
    with pytest.raises(ArtifactError):
        read_encoder_manifest(scratch)


def _mutations(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The valid manifest with a few fields (top-level or one level down) dropped, replaced or added."""
    paths = [(k,) for k in valid] + [(k, j) for k, v in valid.items() if isinstance(v, dict) for j in v]
    step = st.tuples(st.sampled_from(["drop", "set", "add"]), st.sampled_from(paths), JSON, st.text(max_size=8))

    def apply(steps: list[tuple[str, tuple[str, ...], object, str]]) -> dict[str, Any]:
        out = json.loads(json.dumps(valid))
        for op, path, value, key in steps:
            parent = out if len(path) == 1 else out.get(path[0])
            if not isinstance(parent, dict):
                continue
            if op == "drop":
                parent.pop(path[-1], None)
            elif op == "set":
                parent[path[-1]] = value
            else:
                parent[key] = value
        return out

    return st.lists(step, min_size=1, max_size=3).map(apply)


@pytest.fixture(scope="module")
def valid_manifest(encoder_int8_artifact: Path) -> dict[str, Any]:
    return json.loads((encoder_int8_artifact / MANIFEST).read_text())


@FUZZ
@given(data=st.data())
def test_a_mutated_manifest_loads_or_is_refused(data: st.DataObject, scratch: Path, valid_manifest: dict) -> None:
    mutated = data.draw(_mutations(valid_manifest))
    (scratch / MANIFEST).write_text(json.dumps(mutated))
    try:
        manifest = read_encoder_manifest(scratch)
    except ArtifactError as exc:
        assert str(exc).startswith(f"{scratch}: refused")
    else:
        assert isinstance(manifest, EncoderManifest)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_manifest_is_served_or_refused_whole(
    data: st.DataObject, scratch: Path, valid_manifest: dict
) -> None:
    (scratch / MANIFEST).write_text(json.dumps(data.draw(_mutations(valid_manifest))))
    try:
        encoder = TextEncoder.load(scratch)
    except ArtifactError:
        return
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(["Candle"]), axis=1), 1.0, atol=1e-3)


@FUZZ
@given(titles=st.lists(st.text() | st.text(min_size=500, max_size=3000) | st.just(""), max_size=4))
def test_any_unicode_titles_encode_to_unit_rows(titles: list[str], int8: TextEncoder) -> None:
    vectors = int8.encode(titles)
    assert vectors.shape == (len(titles), 32) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_titles_with_lone_surrogates_or_control_characters_encode(int8: TextEncoder) -> None:
    # JSON's "\ud800" decodes to a lone surrogate, which UTF-8 cannot carry.
    vectors = int8.encode(["\ud800 cake", "\x00\x1b[31m", "\u200b", " " * 10_000, "蛋糕架 🎂" * 200])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
