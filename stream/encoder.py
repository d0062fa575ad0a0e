"""The bi-encoder: an item title to a unit vector, from a verified artifact directory.

onnxruntime + tokenizers + numpy only. The artifact (built by `rankstream.compression.encoder_export`)
holds model.onnx, tokenizer.json and a manifest with kind "bi-encoder": the sha256 of every file, the
vector width and reference titles with the vectors the exported graph gave them. `TextEncoder.load`
checks all of it before it encodes a single title, so a bad artifact is refused while the one already
loaded keeps serving.

One title per session run, always. Dynamic INT8 quantizes activations with a scale taken over the whole
input tensor, so in a batch a title's vector would depend on its batch-mates (their tokens and their
padding). Alone, a title gets the same vector wherever it is embedded: in the offline index, in the
catalog job as a new item arrives, and in the exporter that recorded the reference. Batching INT8 is
faster only by a little, and only in small batches, since padding eats the gain in large ones
(docs/results.md, "Bi-encoder artifact: one title per run", has the figures); identical vectors
everywhere are worth more than that for a job that embeds items one at a time as they arrive.
"""

import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tokenizers import Tokenizer

from rankstream.stream.artifact import MANIFEST, sha256_file
from rankstream.stream.errors import ArtifactError, ConfigError
from rankstream.stream.ranker import session_options

log = logging.getLogger(__name__)

KIND = "bi-encoder"
SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "embedding"
# How far a vector's length may be from 1 before the artifact is refused (float32 rounding is ~1e-7).
UNIT_NORM_ATOL = 1e-3
# A title longer than any max_length: the smoke test runs the widest input the graph will be given.
_LONGEST = "x " * 1024
# A listed file is a plain relative path inside the artifact: no "..", no absolute path, no odd characters.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,254}){0,7}")


class EncoderReference(BaseModel):
    """Titles and the vectors the exported graph gave them at build time (the smoke test before serving)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    titles: tuple[str, ...] = Field(min_length=1)
    vectors: tuple[tuple[float, ...], ...]
    atol: float = Field(default=1e-3, gt=0, le=0.1)

    @model_validator(mode="after")
    def _one_vector_per_title(self) -> "EncoderReference":
        if len(self.vectors) != len(self.titles):
            raise ValueError(f"{len(self.titles)} titles but {len(self.vectors)} vectors")
        return self


class EncoderManifest(BaseModel):
    """What a bi-encoder artifact is: its files and their sha256, its vector width and its reference."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: int = SCHEMA_VERSION
    kind: Literal["bi-encoder"] = KIND
    version: str = Field(min_length=1)
    created_at: datetime
    dim: int = Field(ge=1, le=65536)
    max_length: int = Field(ge=2, le=512)
    files: dict[str, str]
    method_chain: tuple[str, ...] = ()
    metrics: dict[str, float] = {}
    reference: EncoderReference

    @field_validator("files")
    @classmethod
    def _plain_names_and_digests(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _FILE_NAME.fullmatch(name) or ".." in name.split("/"):
                raise ValueError(f"file name {name!r} is not a plain relative path inside the artifact")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{name}: {digest!r} is not a sha256 hex digest")
        return files

    @model_validator(mode="after")
    def _reference_fits(self) -> "EncoderManifest":
        for needed in (MODEL_FILE, TOKENIZER_FILE):
            if needed not in self.files:
                raise ValueError(f"{needed} is not listed in files")
        widths = {len(v) for v in self.reference.vectors}
        if widths != {self.dim}:
            raise ValueError(f"reference vectors of width {sorted(widths)}, the manifest says dim {self.dim}")
        return self


def write_encoder_manifest(directory: Path, manifest: EncoderManifest) -> None:
    """Write `manifest` as the artifact's manifest.json."""
    (Path(directory) / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")


def _raw_manifest(directory: Path) -> dict[str, Any]:
    """The manifest's JSON object, refused before field validation when it is not a bi-encoder of this schema,
    so that a cross-encoder artifact or a newer schema gets a message saying so."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: refused: no {MANIFEST}; a bi-encoder artifact is built by export_encoder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ArtifactError(f"{directory}: refused: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{directory}: refused: {MANIFEST} is not a JSON object")
    schema = raw.get("schema_version", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise ArtifactError(
            f"{directory}: refused: schema_version {schema!r}, this loader reads {SCHEMA_VERSION}; "
            "deploy a loader that reads it or re-export the encoder"
        )
    kind = raw.get("kind")
    if kind != KIND:
        hint = " (no kind: a cross-encoder artifact?)" if kind is None else ""
        raise ArtifactError(f"{directory}: refused: kind {kind!r}{hint}, this loader reads {KIND!r} artifacts")
    return raw


def read_encoder_manifest(directory: Path) -> EncoderManifest:
    """Read and verify a bi-encoder artifact's manifest: schema, kind, fields, every listed file present with
    its sha256.

    Raises:
        ArtifactError: naming the directory and every problem found with the files, not only the first.
    """
    directory = Path(directory)
    raw = _raw_manifest(directory)
    try:
        manifest = EncoderManifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{directory}: refused: invalid {MANIFEST}: {exc}") from exc
    problems = []
    for name, digest in manifest.files.items():
        f = directory / name
        try:
            if not f.is_file():
                problems.append(f"{name} is missing")
            elif sha256_file(f) != digest:
                problems.append(f"{name} does not match its sha256 (tampered or partly copied)")
        except OSError as exc:
            problems.append(f"{name} cannot be read: {exc}")
    if problems:
        raise ArtifactError(f"{directory}: refused: " + "; ".join(problems))
    return manifest


class TitleTokenizer:
    """Tokenizes one title at a time: [CLS] title [SEP], truncated at `max_length`, no padding.

    The padding and truncation stored in a tokenizer.json (MiniLM's pads to a fixed 128) are replaced.
    Immutable after construction, so one tokenizer may serve several threads.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)

    def encode(self, title: str) -> dict[str, np.ndarray]:
        """int64 input_ids, attention_mask and token_type_ids of shape (1, tokens)."""
        # A lone surrogate (JSON allows "\ud800") cannot reach the Rust tokenizer; it becomes U+FFFD.
        clean = title.encode("utf-8", "replace").decode("utf-8")
        e = self._tokenizer.encode(clean)
        return {
            "input_ids": np.asarray([e.ids], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids], dtype=np.int64),
        }


def embed_titles(session: ort.InferenceSession, tokenizer: TitleTokenizer, titles: Sequence[str]) -> np.ndarray:
    """float32 [len(titles), width] rows from the graph's `embedding` output, one title per run.

    The exporter records reference vectors through this function, and `TextEncoder.encode` serves through
    it, so a title is tokenized and run the same way at both ends.
    """
    rows = [np.asarray(session.run([OUTPUT], tokenizer.encode(t))[0], dtype=np.float32)[0] for t in titles]
    if not rows:
        width = session.get_outputs()[0].shape[-1]
        return np.zeros((0, width if isinstance(width, int) else 0), np.float32)
    return np.stack(rows)


class TextEncoder:
    """A bi-encoder loaded from an artifact directory, checked before it may encode anything."""

    def __init__(self, manifest: EncoderManifest, session: ort.InferenceSession, tokenizer: TitleTokenizer) -> None:
        self.manifest = manifest
        self.version = manifest.version
        self.dim = manifest.dim
        self._session = session
        self._tokenizer = tokenizer

    @classmethod
    def load(cls, directory: Path, *, threads: int = 1) -> "TextEncoder":
        """Verify an artifact (manifest, checksums, graph inputs and output width, smoke test) and open it.

        Args:
            directory: the artifact directory.
            threads: ONNX Runtime intra-op threads.

        Raises:
            ConfigError: `threads` below 1.
            ArtifactError: the artifact must not be used; the message names the directory and what is wrong.
        """
        if threads < 1:
            raise ConfigError(f"threads ({threads}) must be at least 1")
        directory = Path(directory)
        manifest = read_encoder_manifest(directory)
        try:
            session = ort.InferenceSession(
                str(directory / MODEL_FILE), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
            tokenizer = TitleTokenizer(directory / TOKENIZER_FILE, manifest.max_length)
        except Exception as exc:  # noqa: BLE001 - ORT and tokenizers raise their own untyped errors
            raise ArtifactError(f"{directory}: refused: cannot open the model or tokenizer: {exc}") from exc
        _check_graph(directory, manifest, session)
        encoder = cls(manifest, session, tokenizer)
        encoder._smoke_test(directory)
        log.info(
            "loaded bi-encoder %s from %s (dim %d, threads %d)", manifest.version, directory, manifest.dim, threads
        )
        return encoder

    def _smoke_test(self, directory: Path) -> None:
        """ArtifactError, naming every failing title, unless each reference title gets its recorded unit vector."""
        ref = self.manifest.reference
        try:
            got = self.encode(ref.titles)
        except Exception as exc:  # noqa: BLE001 - a graph that cannot run is refused, whatever ORT raised
            raise ArtifactError(f"{directory}: refused: the graph fails on the reference titles: {exc}") from exc
        if got.shape != (len(ref.titles), self.dim):
            raise ArtifactError(
                f"{directory}: refused: the graph gave vectors of shape {got.shape[1:]}, "
                f"the manifest says dim {self.dim}"
            )
        want = np.asarray(ref.vectors, dtype=np.float32)
        problems = []
        try:
            longest = self.encode([_LONGEST])[0]
        except Exception as exc:  # noqa: BLE001 - e.g. a max_length beyond the graph's position table
            problems.append(f"a title of max_length {self.manifest.max_length} tokens fails: {exc}")
        else:
            if not math.isclose(float(np.linalg.norm(longest)), 1.0, abs_tol=UNIT_NORM_ATOL):
                problems.append(f"a title of max_length {self.manifest.max_length} tokens gets no unit vector")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            diff = float(np.max(np.abs(g - w)))
            norm = float(np.linalg.norm(g))
            if not diff <= ref.atol:  # also catches NaN
                problems.append(f"title {i} ({ref.titles[i][:40]!r}): {diff:.3g} from its reference vector")
            if not math.isclose(norm, 1.0, abs_tol=UNIT_NORM_ATOL):
                problems.append(f"title {i}: vector of length {norm:.6f}, not a unit vector")
        if problems:
            raise ArtifactError(
                f"{directory}: refused: smoke test failed (atol {ref.atol}) on "
                f"{len(ref.titles)} reference titles: " + "; ".join(problems)
            )

    def encode(self, titles: Sequence[str]) -> np.ndarray:
        """float32 [len(titles), dim] unit rows, in input order; each title is run alone (see the module doc)."""
        if isinstance(titles, str):
            raise TypeError("encode takes a sequence of titles; wrap a single title in a list")
        if not titles:
            return np.zeros((0, self.dim), np.float32)
        return embed_titles(self._session, self._tokenizer, titles)


def _check_graph(directory: Path, manifest: EncoderManifest, session: ort.InferenceSession) -> None:
    """ArtifactError, naming every mismatch at once, unless the graph reads the three int64 token inputs and
    writes `embedding` [batch, dim]."""
    problems = []
    inputs = {i.name: i for i in session.get_inputs()}
    if sorted(inputs) != sorted(INPUTS):
        problems.append(f"graph inputs {sorted(inputs)} are not {sorted(INPUTS)}")
    problems += [
        f"graph input {n!r} is {i.type}, not tensor(int64)" for n, i in inputs.items() if i.type != "tensor(int64)"
    ]
    outputs = {o.name: o for o in session.get_outputs()}
    if OUTPUT not in outputs:
        problems.append(f"graph outputs {sorted(outputs)} lack {OUTPUT!r}")
    else:
        shape = outputs[OUTPUT].shape
        if len(shape) != 2 or (isinstance(shape[-1], int) and shape[-1] != manifest.dim):
            problems.append(f"graph output {OUTPUT!r} has shape {shape}, not [batch, {manifest.dim}]")
        if outputs[OUTPUT].type != "tensor(float)":
            problems.append(f"graph output {OUTPUT!r} is {outputs[OUTPUT].type}, not tensor(float)")
    if problems:
        raise ArtifactError(f"{directory}: refused: " + "; ".join(problems))
