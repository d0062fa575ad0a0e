"""Model artifacts: a versioned directory holding the ONNX graph, tokenizer and a manifest.

The manifest pins the sha256 of every file and carries reference outputs, so a scorer can prove that
the model it is about to serve is the model that was evaluated before it serves a single event.
"""

import hashlib
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rankstream.stream.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class InputSpec(BaseModel):
    """What the graph expects; the scorer refuses an artifact whose spec it cannot feed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    output: str = "logits"
    max_length: int = Field(default=64, ge=8, le=512)
    pair_format: str
    # The serve-time signal set (stream.signals.SIGNALS.version) fed as the float input `signals`
    # [batch, len(names)]; None for a text-only model, whose inputs do not list `signals`.
    signals: str | None = None
    # The model's non-text part as JSON (`stream.ranker.LinearPart`): the position prior per candidate rank
    # and the signal head. Lets a scorer cross-encode only the candidates this cheap part ranks highest.
    linear_file: str | None = None
    # True when a pair's score does not depend on the other pairs in its batch (fp32, static INT8), so a
    # scorer may batch several users' candidates together. Absent (None) means False: dynamic INT8 takes
    # activation scales from the whole batch, and artifacts from before this field did not promise it.
    batch_invariant: bool | None = None


class Reference(BaseModel):
    """Pairs and the scores the exported graph gave them at build time (smoke test before serving)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pairs: tuple[tuple[str, str], ...]
    signals: tuple[tuple[float, ...], ...] | None = None  # one row per pair, for a model with signals
    scores: tuple[float, ...]
    atol: float = 1e-3


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    version: str
    created_at: datetime
    parent: str | None = None
    method_chain: tuple[str, ...]
    metrics: dict[str, float] = {}
    input_spec: InputSpec
    reference: Reference
    files: dict[str, str]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(
    directory: Path,
    *,
    version: str,
    parent: str | None,
    method_chain: list[str],
    metrics: dict[str, float],
    input_spec: InputSpec,
    reference: Reference,
) -> Manifest:
    """Hash every file already in `directory` and write the manifest next to them."""
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = Manifest(
        version=version,
        created_at=datetime.now(UTC),
        parent=parent,
        method_chain=tuple(method_chain),
        metrics=metrics,
        input_spec=input_spec,
        reference=reference,
        files=files,
    )
    # Unset optional fields are left out, so a scorer from before a field existed still reads the manifest
    # of a model that does not use it (a rolling upgrade keeps old replicas swapping).
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
    return manifest


def load_manifest(directory: Path) -> Manifest:
    """Read and verify an artifact directory: every listed file present with its sha256, no extra model files.

    Raises ArtifactError naming every problem found, not only the first.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; an artifact is a directory built by `rankstream compress`")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    if manifest.schema_version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {manifest.schema_version}, this scorer reads {SCHEMA_VERSION}")
    problems = []
    spec = manifest.input_spec
    for needed in (spec.model_file, spec.tokenizer_file):
        if needed not in manifest.files:
            problems.append(f"{needed} is not listed in the manifest")
    for name, digest in manifest.files.items():
        f = directory / name
        if not f.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{name} does not match its sha256 (tampered or partly copied)")
    if problems:
        raise ArtifactError(f"{directory}: refused: " + "; ".join(problems))
    return manifest


def stamp_metrics(directory: Path, metrics: dict[str, float]) -> Manifest:
    """Add evaluation metrics to a verified artifact's manifest (the files and their hashes are unchanged)."""
    old = load_manifest(directory)
    new = old.model_copy(update={"metrics": {**old.metrics, **metrics}})
    (Path(directory) / MANIFEST).write_text(new.model_dump_json(indent=2, exclude_none=True) + "\n")
    return new


def copy_artifact(src: Path, dst: Path) -> Manifest:
    """Copy a verified artifact to `dst`: into a hidden sibling first, verified, then renamed into place,
    so that a reader of `dst`'s folder never sees a half-copied artifact. Returns the copy's manifest."""
    src, dst = Path(src), Path(dst)
    load_manifest(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.parent / f".incoming-{dst.name}-{time.time_ns()}"
    try:
        shutil.copytree(src, staging)
        manifest = load_manifest(staging)  # the copy is whole
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
