"""A Hugging Face sentence encoder to a bi-encoder artifact directory (ONNX, tokenizer, manifest).

The graph is the whole embedding: encoder, mean pooling over the real tokens, L2 normalisation (the
vectors of `compression.embed.mean_pool`, in fewer graph nodes: `pool_unit`), so a server needs no pooling
code of its own. Legacy ONNX exporter over
eager attention, ORT transformer fusions, optional dynamic INT8 with the cross-encoder export's settings;
then reference vectors recorded from the final graph through `stream.encoder.embed_titles`, the function
`TextEncoder` serves with, and the finished directory loaded by `TextEncoder.load` before it is renamed
into place.
"""

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from transformers import AutoModel

from rankstream.compression.export import (
    DYNAMIC_INT8_CHAIN,
    OPSET,
    _optimize,
    _optimize_chain,
    _quantize_dynamic_int8,
)
from rankstream.stream.artifact import sha256_file
from rankstream.stream.encoder import (
    INPUTS,
    KIND,
    MODEL_FILE,
    OUTPUT,
    TOKENIZER_FILE,
    EncoderManifest,
    EncoderReference,
    TextEncoder,
    TitleTokenizer,
    embed_titles,
    write_encoder_manifest,
)
from rankstream.stream.errors import ArtifactError
from rankstream.stream.ranker import session_options

log = logging.getLogger(__name__)

# Catalog titles are a handful of words; 32 tokens keeps the longest ones whole.
MAX_LENGTH = 32
QUANTIZE = ("none", "int8")

# Smoke-test titles a caller may pass as `reference_titles`: short and long (truncated at 32 tokens),
# one word, punctuation, digits, accents and an empty title.
REFERENCE_TITLES: tuple[str, ...] = (
    "White hanging heart T-light holder",
    "Jumbo bag red retrospot",
    "Candle",
    "Set of 3 cake tins pantry design " * 4,
    "USB charging cable 2m, black (iPhone 15)",
    "Crème brûlée dish — 4 pack",
    "",
)


def pool_unit(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mean_pool`'s unit vectors in fewer graph nodes (a 2-layer student's optimized graph: 27 instead of
    32): the L2 normalisation cancels the mean's division by the token count, so the masked sum is
    normalised directly, and one batched matrix product does the masking and the sum. A short title runs a
    2-layer student in about 250 us, and each small node costs a few: the pooling was a fifth of its
    kernel time."""
    summed = torch.matmul(mask.unsqueeze(1).to(hidden.dtype), hidden).squeeze(1)
    return summed / torch.linalg.vector_norm(summed, dim=1, keepdim=True).clamp(min=1e-12)


class _Embedding(torch.nn.Module):
    """Token tensors in INPUTS order to one output: mean-pooled, L2-normalised last hidden states."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return pool_unit(out.last_hidden_state, attention_mask)


def _padded(tokenizer: TitleTokenizer, titles: Sequence[str], pad_id: int) -> dict[str, np.ndarray]:
    """The titles as one batch padded to the longest (the export's example input, and the batch check)."""
    rows = [tokenizer.encode(t) for t in titles]
    width = max(r["input_ids"].shape[1] for r in rows)
    out = {name: np.zeros((len(rows), width), np.int64) for name in INPUTS}
    out["input_ids"][:] = pad_id
    for i, r in enumerate(rows):
        for name in INPUTS:
            out[name][i, : r[name].shape[1]] = r[name][0]
    return out


def _torch_vectors(wrapper: torch.nn.Module, tokenizer: TitleTokenizer, titles: Sequence[str]) -> np.ndarray:
    """Each title alone through the torch wrapper, as `embed_titles` runs the graph."""
    with torch.no_grad():
        rows = [wrapper(*(torch.from_numpy(v) for v in tokenizer.encode(t).values()))[0] for t in titles]
    return torch.stack(rows).numpy().astype(np.float32)


def _session(path: Path) -> ort.InferenceSession:
    # One thread, as `TextEncoder.load` opens it by default.
    return ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])


def _export_graph(wrapper: torch.nn.Module, example: Mapping[str, np.ndarray], path: Path) -> None:
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The same exceptions as the cross-encoder export (compression.export._export_legacy), for the same
        # reasons: the legacy exporter is the one ORT's optimizer fuses; transformers' mask builder only
        # indexes with aranges; traced shape branches hold for every input size.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _copy_tokenizer(model_dir: Path, dst: Path, vocab_size: int) -> None:
    """The model's fast tokenizer file, checked to give only ids its embedding table has.

    Required as a file: without tokenizer.json and vocab.txt, transformers builds a tokenizer of five
    special tokens without a word, and every title would encode as [UNK]s.
    """
    src = model_dir / TOKENIZER_FILE
    if not src.is_file():
        raise ValueError(
            f"{model_dir} has no {TOKENIZER_FILE}; save the model's tokenizer beside it "
            "(AutoTokenizer.from_pretrained(base).save_pretrained(model_dir))"
        )
    size = Tokenizer.from_file(str(src)).get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ValueError(f"{src} has {size} tokens, the model's embedding table {vocab_size}: not this model's")
    shutil.copyfile(src, dst)


INT8_CHAIN = f"{DYNAMIC_INT8_CHAIN}:embeddings-fp32"


def _quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic per-channel INT8 weights of the matrix products and the fused attention; the embedding
    table stays fp32. Quantized too, it cost an FFN-pruned student 2% of its valid retrieval recall@50
    (0.0695 against 0.0711; fp32 0.0730) and no time: a lookup is not where a title's time goes."""
    _quantize_dynamic_int8(fp32, out, op_types=["MatMul", "Attention"])


# Long because each stage hands the next a file in one temporary folder; the order of the stages is the contract.
def export_encoder(
    model_dir: Path,
    out_dir: Path,
    *,
    quantize: str = "int8",
    reference_titles: Sequence[str],
    version: str,
    metrics: Mapping[str, float] | None = None,
    method_chain: Sequence[str] = (),
    max_length: int = MAX_LENGTH,
    reference_atol: float = 1e-3,
    fp32_atol: float = 1e-4,
) -> Path:
    """Write bi-encoder artifact `out_dir` (must not exist) from the BertModel-compatible encoder in
    `model_dir`; returns `out_dir`.

    Args:
        model_dir: a Hugging Face model folder with its tokenizer (e.g. `compression.train.minilm_path()`).
        out_dir: the artifact directory to create; built beside it and renamed into place when verified.
        quantize: "none" (fp32) or "int8" (dynamic INT8 weights, per channel).
        reference_titles: the smoke-test titles (e.g. REFERENCE_TITLES); their vectors from the final graph
            go into the manifest.
        version: the artifact's version.
        metrics: evaluation figures to carry in the manifest.
        method_chain: what produced `model_dir`; the export steps are appended.
        max_length: tokens per title, [CLS] and [SEP] included; longer titles are truncated.
        reference_atol: how far a served vector may be from its reference, per component.
        fp32_atol: how far the fp32 graph may be from torch, per component, before the export is refused.

    The manifest's metrics gain `export_fp32_max_abs_diff` (torch vs the optimized fp32 graph),
    `export_batch_max_abs_diff` (the served graph: each title alone vs all in one padded batch: why
    `TextEncoder` runs titles one at a time) and, for INT8, `export_int8_max_abs_diff` and
    `export_int8_min_cosine` (torch vs the served graph).

    Raises:
        ArtifactError: `out_dir` exists, the graph differs from torch, or the written artifact fails to load.
        ValueError: an unknown `quantize`, no version or reference titles, a `max_length` the model cannot
            take, or no tokenizer.json (or one with ids beyond the embedding table) in `model_dir`.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise ArtifactError(f"{out_dir} already exists; artifact versions are immutable, pick a new version")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if not version:
        raise ValueError("version is empty: name the artifact's version")
    titles = list(reference_titles)
    if not titles:
        raise ValueError("reference_titles is empty: pass a few titles for the smoke test (e.g. REFERENCE_TITLES)")
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    cfg = model.config
    if not 2 <= max_length <= cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} is outside 2..{cfg.max_position_embeddings} for {model_dir}")
    wrapper = _Embedding(model).eval()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed in one step, so a watcher never sees half of it.
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        partial.chmod(0o755)  # mkdtemp's 0700 would hide the artifact from servers running as other users
        _copy_tokenizer(model_dir, partial / TOKENIZER_FILE, cfg.vocab_size)
        tokenizer = TitleTokenizer(partial / TOKENIZER_FILE, max_length)
        torch_vectors = _torch_vectors(wrapper, tokenizer, titles)
        batch = _padded(tokenizer, titles, cfg.pad_token_id or 0)
        with tempfile.TemporaryDirectory(prefix="rankstream-encoder-export-") as tmp:
            raw, fp32 = Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx"
            _export_graph(wrapper, batch, raw)
            fused = _optimize(raw, fp32, cfg.num_attention_heads, cfg.hidden_size)
            fp32_diff = float(np.max(np.abs(embed_titles(_session(fp32), tokenizer, titles) - torch_vectors)))
            log.info("torch vs fp32 ONNX on %d reference titles: max abs diff %.3g", len(titles), fp32_diff)
            if not fp32_diff <= fp32_atol:
                raise ArtifactError(
                    f"exported fp32 graph differs from torch by {fp32_diff:.3g} (> {fp32_atol}) on the "
                    "reference titles; the export is wrong, check the exporter and optimizer versions"
                )
            chain = [
                *method_chain,
                "bi-encoder:mean-pool-l2",
                "onnx:legacy-eager",
                *_optimize_chain(fused),
            ]
            if quantize == "int8":
                _quantize_int8(fp32, partial / MODEL_FILE)
                chain.append(INT8_CHAIN)
            else:
                shutil.copyfile(fp32, partial / MODEL_FILE)

        session = _session(partial / MODEL_FILE)
        vectors = embed_titles(session, tokenizer, titles)
        (together,) = session.run([OUTPUT], batch)
        all_metrics = dict(metrics or {})
        all_metrics["export_fp32_max_abs_diff"] = fp32_diff
        all_metrics["export_batch_max_abs_diff"] = float(np.max(np.abs(np.asarray(together) - vectors)))
        if quantize == "int8":
            all_metrics["export_int8_max_abs_diff"] = float(np.max(np.abs(vectors - torch_vectors)))
            all_metrics["export_int8_min_cosine"] = float(np.min(np.sum(vectors * torch_vectors, axis=1)))
        manifest = EncoderManifest(
            kind=KIND,
            version=version,
            created_at=datetime.now(UTC),
            dim=int(vectors.shape[1]),
            max_length=max_length,
            files={name: sha256_file(partial / name) for name in (MODEL_FILE, TOKENIZER_FILE)},
            method_chain=tuple(chain),
            metrics=all_metrics,
            reference=EncoderReference(
                titles=tuple(titles),
                vectors=tuple(tuple(float(x) for x in row) for row in vectors),
                atol=reference_atol,
            ),
        )
        write_encoder_manifest(partial, manifest)
        TextEncoder.load(partial)  # what a server will check, checked before anyone can see it
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("wrote bi-encoder %s (%s, dim %d) to %s", version, " -> ".join(chain), manifest.dim, out_dir)
    return out_dir
