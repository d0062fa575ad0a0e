import json
from pathlib import Path

import pytest

from rankstream.bench.canary import make_candidate
from rankstream.stream.artifact import InputSpec, Reference, load_manifest, write_manifest
from rankstream.stream.errors import ConfigError
from rankstream.stream.features import PAIR_FORMAT
from tests.model_builders import stand_in_artifact

LINEAR = {"position_bias": [1.0, 0.5, 0.0], "signal_mean": [0.0], "signal_scale": [1.0], "signal_weight": [2.0]}


def with_linear(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"placeholder")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "linear.json").write_text(json.dumps(LINEAR))
    write_manifest(
        folder,
        version="v1",
        parent=None,
        method_chain=["x"],
        metrics={},
        input_spec=InputSpec(pair_format=PAIR_FORMAT, linear_file="linear.json"),
        reference=Reference(pairs=(), scores=()),
    )
    return folder


def test_the_worse_candidate_reverses_the_linear_part_and_verifies_under_its_own_version(tmp_path: Path) -> None:
    model = with_linear(tmp_path / "v1")
    worse = make_candidate(model, "worse", tmp_path / "out")
    manifest = load_manifest(worse)  # checksums verify
    assert manifest.version == "v1-canary-worse" and manifest.parent == "v1"
    linear = json.loads((worse / "linear.json").read_text())
    assert linear["position_bias"] == [-1.0, -0.5, -0.0] and linear["signal_weight"] == [-2.0]
    assert linear["signal_mean"] == LINEAR["signal_mean"]
    assert (worse / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    assert json.loads((model / "linear.json").read_text()) == LINEAR, "the model itself is untouched"


def test_the_equal_candidate_is_the_same_files_under_another_version(tmp_path: Path) -> None:
    model = with_linear(tmp_path / "v1")
    equal = make_candidate(model, "equal", tmp_path / "out")
    assert load_manifest(equal).files == load_manifest(model).files
    assert load_manifest(equal).version == "v1-canary-equal"


def test_a_model_without_a_linear_part_cannot_be_made_worse_this_way(tmp_path: Path) -> None:
    model = stand_in_artifact(tmp_path / "v0", "v0", ["x"])
    with pytest.raises(ConfigError, match="no linear part"):
        make_candidate(model, "worse", tmp_path / "out")
    with pytest.raises(ConfigError, match="one of"):
        make_candidate(model, "better", tmp_path / "out")
