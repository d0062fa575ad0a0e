"""Artifacts are loaded only after their checksums verify: a tampered file never reaches ONNX Runtime."""

from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import pytest

from rankstream.stream.errors import ArtifactError
from rankstream.stream.ranker import Ranker


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model files ONNX Runtime was asked to open during the test (each is then opened for real)."""
    paths: list[str] = []
    real = ort.InferenceSession

    def recording(path: str, *args: object, **kwargs: object) -> ort.InferenceSession:
        paths.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return paths


def test_an_intact_artifact_is_opened_once(
    int8_artifact: Path, artifact_copy: Callable[[Path], Path], opened: list[str]
) -> None:
    # Guards the check below: the recorder sits where Ranker.load opens the model.
    d = artifact_copy(int8_artifact)
    Ranker.load(d)
    assert opened == [str(d / "model.onnx")]


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_tampered_file_is_refused_before_onnx_runtime_opens_anything(
    name: str, int8_artifact: Path, artifact_copy: Callable[[Path], Path], opened: list[str]
) -> None:
    d = artifact_copy(int8_artifact)
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name.replace('.', '[.]')} does not match its sha256"):
        Ranker.load(d)
    assert opened == []


def test_a_model_swapped_for_another_valid_graph_is_refused_unopened(
    int8_artifact: Path, fp32_artifact: Path, artifact_copy: Callable[[Path], Path], opened: list[str]
) -> None:
    # A well-formed ONNX file ORT would happily run, but not the one the manifest pins.
    d = artifact_copy(int8_artifact)
    (d / "model.onnx").write_bytes((fp32_artifact / "model.onnx").read_bytes())
    with pytest.raises(ArtifactError, match=r"model[.]onnx does not match its sha256"):
        Ranker.load(d)
    assert opened == []
