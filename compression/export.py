"""A fine-tuned Hugging Face cross-encoder to a servable artifact directory (ONNX, tokenizer, manifest).

Legacy ONNX exporter over eager attention, ORT transformer fusions, optional per-channel INT8 (dynamic, or
static QDQ calibrated on training lists: `compression.calibrate`), then reference scores recorded from the
final graph, tokenized exactly as the scorer will. A model with
a signal head gets a fourth input, `signals` [batch, F] float32; its head (standardisation included)
stays fp32 in the INT8 graph.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from rankstream.compression.calibrate import STATIC_CHAIN, ActivationType, ListReader, quantize_static_int8
from rankstream.compression.model import linear_part, load_cross_encoder, signal_spec
from rankstream.compression.pairs import LabelledPair
from rankstream.compression.unfuse import CHAIN as UNFUSE_CHAIN
from rankstream.compression.unfuse import unfuse_slow_kernels
from rankstream.stream.artifact import InputSpec, Reference, write_manifest
from rankstream.stream.errors import ArtifactError
from rankstream.stream.features import PAIR_FORMAT, candidate_text, history_text
from rankstream.stream.ranker import SIGNALS_INPUT, PairEncoder, run_session, session_options
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "logits"
OPSET = 17
LINEAR_FILE = "linear.json"
Quantize = Literal["none", "int8", "int8-static"]
# A batch-invariant graph scores a pair alone as inside any batch up to float reassociation; above this
# the claim is refused at export (and by the ranker's smoke test).
BATCH_INVARIANCE_ATOL = 1e-4

# Fixed smoke-test pairs: short and long histories (the longest is truncated at the serving max length),
# a one-word candidate, punctuation and digits.
REFERENCE_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (history_text(h), candidate_text(c, r))
    for r, (h, c) in enumerate(
        (
            (["White hanging heart T-light holder"], "Red retrospot cake stand"),
            (["Jumbo bag red retrospot", "Lunch bag pink polkadot"], "Jumbo storage bag suki"),
            (["Set of 3 cake tins pantry design", "Pack of 72 retrospot cake cases"], "Regency cakestand 3 tier"),
            (["Glass star frosted t-light holder"], "Candle"),
            (
                [
                    "Assorted colour bird ornament",
                    "Party bunting",
                    "Spotty bunting",
                    "Childrens apron dolly girl",
                    "Alarm clock bakelike red",
                ],
                "Alarm clock bakelike green",
            ),
            (
                [
                    "Wooden frame antique white",
                    "Wooden picture frame white finish",
                    "Hand warmer union jack",
                    "Knitted union flag hot water bottle",
                    "Vintage heads and tails card game " * 3,
                ],
                "Victorian glass hanging t-light",
            ),
            (["USB charging cable 2m", "Phone case, black (iPhone 15)"], "Screen protector 2-pack"),
            (["Paper chain kit 50's christmas"], "Paper chain kit vintage christmas"),
        )
    )
)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The ORT quantizer logs a line per tensor through the root logger; keep its warnings only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


class _Logits(torch.nn.Module):
    """Positional inputs in INPUTS order (then `signals` for a model with a head), one output tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        signals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if signals is None else {"signals": signals}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **extra)
        return out.logits


def _feed(encoded: Mapping[str, np.ndarray], signals: np.ndarray | None) -> dict[str, torch.Tensor]:
    feed = {k: torch.from_numpy(v) for k, v in encoded.items()}
    if signals is not None:
        feed["signals"] = torch.from_numpy(signals)
    return feed


def _torch_scores(model: torch.nn.Module, encoded: Mapping[str, np.ndarray], signals: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        logits = model(**_feed(encoded, signals)).logits
    return logits.reshape(-1).numpy().astype(np.float32)


def _ort_scores(
    path: Path, encoder: PairEncoder, pairs: Sequence[tuple[str, str]], signals: np.ndarray | None
) -> np.ndarray:
    session = ort.InferenceSession(str(path), sess_options=session_options(2), providers=["CPUExecutionProvider"])
    inputs = INPUTS if signals is None else (*INPUTS, SIGNALS_INPUT)
    # One batch, as the scorer's smoke test does (dynamic INT8 depends on the batch).
    return run_session(session, encoder, pairs, inputs=inputs, output=OUTPUT, batch_size=len(pairs), signals=signals)


def _alone_vs_together(
    path: Path, encoder: PairEncoder, pairs: Sequence[tuple[str, str]], signals: np.ndarray | None
) -> float:
    """Largest score change between scoring each pair alone and all pairs in one padded batch."""
    session = ort.InferenceSession(str(path), sess_options=session_options(2), providers=["CPUExecutionProvider"])
    inputs = INPUTS if signals is None else (*INPUTS, SIGNALS_INPUT)
    kw = {"inputs": inputs, "output": OUTPUT, "signals": signals}
    alone = run_session(session, encoder, pairs, batch_size=1, **kw)  # type: ignore[arg-type]
    together = run_session(session, encoder, pairs, batch_size=len(pairs), **kw)  # type: ignore[arg-type]
    return float(np.max(np.abs(alone - together)))


def reference_signals(model: torch.nn.Module, n: int, seed: int = 0) -> np.ndarray | None:
    """Smoke-test rows for a model with a head: its training mean plus seeded noise of its training spread."""
    if not getattr(model, "n_signals", 0):
        return None
    mean = model.signal_mean.detach().numpy().astype(np.float64)
    scale = model.signal_scale.detach().numpy().astype(np.float64)
    std = np.where(scale > 0, 1.0 / np.maximum(scale, 1e-12), 1.0)
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    return (mean + z * std).astype(np.float32)


def _export_legacy(
    model: torch.nn.Module, encoded: Mapping[str, np.ndarray], signals: np.ndarray | None, path: Path
) -> None:
    names = INPUTS if signals is None else (*INPUTS, SIGNALS_INPUT)
    args = tuple(_feed(encoded, signals)[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
    if signals is not None:
        axes[SIGNALS_INPUT] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter is deprecated, but it is the one whose graphs ORT's optimizer fuses.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        # transformers' mask builder indexes with aranges, never negative indices, which is the case this
        # warns about; the fp32-vs-torch comparison after export checks the graph anyway.
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        # Tracing freezes transformers' Python branches on shapes (e.g. "mask shorter than the keys?");
        # both sides are the same sequence length at any size, so the frozen branch holds for every input.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.")
        # MPNet's embeddings pass a padding index: F.embedding range-checks it against the table size, both
        # fixed for a given model, so the frozen branch is the same for every input.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        torch.onnx.export(
            _Logits(model),
            args,
            str(path),
            input_names=list(names),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _optimize(raw: Path, out: Path, num_heads: int, hidden_size: int, *, unfuse: bool = True) -> dict[str, int]:
    """ORT's transformer fusions; with `unfuse`, the two whose CPU kernels are slow split back
    (`compression.unfuse`). The counts carry `attention_nodes` and, when any were split, `unfused`."""
    optimized = optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    attention = sum(1 for n in optimized.model.graph.node if n.op_type in ("Attention", "MultiHeadAttention"))
    fused["attention_nodes"] = attention
    if unfuse:
        fused["unfused"] = sum(unfuse_slow_kernels(optimized.model).values())
    optimized.save_model_to_file(str(out))
    if attention:
        log.info("ORT optimizer fused %d attention nodes (%s)", attention, fused)
    else:
        log.warning("ORT optimizer fused no attention (%s); the graph is slower but correct", fused)
    return fused


def _optimize_chain(fused: dict[str, int]) -> list[str]:
    """The method-chain steps of `_optimize`, from the counts it returned."""
    chain = ["ort-optimize:fused-attention" if fused["attention_nodes"] else "ort-optimize:unfused"]
    return chain + ([UNFUSE_CHAIN] if fused.get("unfused") else [])


DYNAMIC_INT8_CHAIN = "quantize:int8-dynamic-per-channel-7bit"


def _quantize_dynamic_int8(
    fp32: Path, out: Path, *, op_types: Sequence[str] | None = None, nodes_to_exclude: Sequence[str] | None = None
) -> None:
    """Dynamic INT8, weights per channel within 7 bits (`DYNAMIC_INT8_CHAIN`): x86 CPUs without VNNI (AVX2)
    sum u8 x s8 products pairwise into int16, which 8-bit weights can saturate (docs/artifacts.md)."""
    with _quiet_root_logger():
        quantize_dynamic(
            model_input=str(fp32),
            model_output=str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            op_types_to_quantize=None if op_types is None else list(op_types),
            nodes_to_exclude=None if nodes_to_exclude is None else list(nodes_to_exclude),
            # The fused graph carries tensors without type info; tell the quantizer they are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _layer_nodes(graph: Path, layers: Sequence[int]) -> list[str]:
    """Nodes INT8 must skip: encoder `layers` (Attention_i + MatMuls), the position-prior lookup and the
    signal head."""
    names = []
    for node in onnx.load(str(graph), load_external_data=False).graph.node:
        # The position prior's table lookup stays fp32: one scalar per token, nothing to gain.
        if node.op_type == "Gather" and any("position_bias" in x for x in node.input):
            names.append(node.name)
        # The signal head reads raw signals spanning orders of magnitude; it is a few flops, keep it exact.
        if any(x == SIGNALS_INPUT or "signal_" in x for x in node.input):
            names.append(node.name)
        for i in layers:
            if node.name == f"Attention_{i}" or (node.op_type == "MatMul" and f"/layer.{i}/" in node.name):
                names.append(node.name)
    return names


# Long because each stage hands the next a file in one temporary folder; the order of the stages is the contract.
def export_onnx(
    hf_dir: Path,
    out_dir: Path,
    *,
    version: str,
    quantize: Quantize = "int8",
    max_length: int = 64,
    parent: str | None = None,
    method_chain: Sequence[str] = (),
    metrics: Mapping[str, float] | None = None,
    reference_pairs: Sequence[tuple[str, str]] = REFERENCE_PAIRS,
    reference_atol: float = 1e-3,
    fp32_atol: float = 1e-3,
    int8_fp32_layers: Sequence[int] = (),
    calibration: Sequence[Sequence[LabelledPair]] = (),
    activations: ActivationType = "uint8",
    unfuse: bool = True,
) -> Path:
    """Write artifact `out_dir` (must not exist) from the checkpoint in `hf_dir`; returns `out_dir`.

    `method_chain` is what produced `hf_dir` (e.g. ["finetune:minilm-l6"]); the export steps are appended.
    The manifest's metrics gain `export_fp32_max_abs_diff` (torch vs the optimized fp32 graph on the
    reference pairs; above `fp32_atol` the export is refused) and, for INT8, `export_int8_max_abs_diff`
    (torch vs the served graph). `int8_fp32_layers` keeps those encoder layers' MatMuls and fused
    attention in fp32 (the per-layer fallback when INT8 costs too much ranking quality).

    `quantize="int8-static"` fixes activation scales from `calibration` (training lists, one calibration
    batch per list; required) with `activations` as their type, so that scores do not depend on
    batch-mates: the manifest then says `batch_invariant`, as it does for fp32. The manifest's metrics gain
    `export_batch_max_abs_diff` (each reference pair alone vs all in one batch); a batch-invariant artifact
    whose graph moves more than BATCH_INVARIANCE_ATOL is refused.

    `unfuse=False` keeps ORT's SkipLayerNormalization and BiasGelu kernels (`compression.unfuse`), for
    `bench fusions` to time the graph both ways.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if out_dir.exists():
        raise ArtifactError(f"{out_dir} already exists; artifact versions are immutable, pick a new version")
    if quantize not in ("none", "int8", "int8-static"):
        raise ValueError(f"quantize must be 'none', 'int8' or 'int8-static', got {quantize!r}")
    if quantize == "int8-static" and not calibration:
        raise ValueError("static INT8 needs calibration lists: pass some of the lists the model was trained on")
    pairs = [(a, b) for a, b in reference_pairs]
    model = load_cross_encoder(hf_dir).eval()
    cfg = model.config
    spec = signal_spec(model)
    if spec is not None and (spec["version"] != SIGNALS.version or tuple(spec["names"]) != SIGNALS.names):
        raise ArtifactError(
            f"{hf_dir} was trained on signal set {spec['version']!r} {spec['names']}, this code computes "
            f"{SIGNALS.version!r} {list(SIGNALS.names)}; retrain it on the current signals"
        )
    inputs = INPUTS if spec is None else (*INPUTS, SIGNALS_INPUT)
    encoder = PairEncoder(hf_dir / "tokenizer.json", max_length)
    encoded = encoder.encode(pairs)
    signals = reference_signals(model, len(pairs))
    torch_scores = _torch_scores(model, encoded, signals)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed in one step, so a registry watcher never sees half of it.
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        partial.chmod(0o755)  # mkdtemp's 0700 would hide the artifact from scorers running as other users
        with tempfile.TemporaryDirectory(prefix="rankstream-export-") as tmp:
            raw, fp32 = Path(tmp) / "raw.onnx", Path(tmp) / "fp32.onnx"
            _export_legacy(model, encoded, signals, raw)
            fused = _optimize(raw, fp32, cfg.num_attention_heads, cfg.hidden_size, unfuse=unfuse)
            fp32_diff = float(np.max(np.abs(_ort_scores(fp32, encoder, pairs, signals) - torch_scores)))
            log.info("torch vs fp32 ONNX on %d reference pairs: max abs diff %.3g", len(pairs), fp32_diff)
            if not fp32_diff <= fp32_atol:
                raise ArtifactError(
                    f"exported fp32 graph differs from torch by {fp32_diff:.3g} (> {fp32_atol}) on the "
                    "reference pairs; the export is wrong, check the exporter and optimizer versions"
                )
            chain = [
                *method_chain,
                "onnx:legacy-eager",
                *_optimize_chain(fused),
            ]
            final = partial / "model.onnx"
            if quantize == "int8-static":
                with _quiet_root_logger():
                    quantize_static_int8(
                        fp32,
                        final,
                        ListReader(calibration, encoder, inputs),
                        nodes_to_exclude=_layer_nodes(fp32, int8_fp32_layers),
                        activations=activations,
                    )
                chain.append(STATIC_CHAIN if activations == "uint8" else f"{STATIC_CHAIN}:int8-activations")
            elif quantize == "int8":
                _quantize_dynamic_int8(fp32, final, nodes_to_exclude=_layer_nodes(fp32, int8_fp32_layers))
                chain.append(DYNAMIC_INT8_CHAIN)
            else:
                shutil.copyfile(fp32, final)
            if quantize != "none" and int8_fp32_layers:
                chain.append(f"int8-fallback:fp32-layers:{','.join(map(str, sorted(int8_fp32_layers)))}")
        shutil.copyfile(hf_dir / "tokenizer.json", partial / "tokenizer.json")
        linear = linear_part(model, encoder)
        if linear is not None:
            (partial / LINEAR_FILE).write_text(linear.to_json() + "\n")

        scores = _ort_scores(final, encoder, pairs, signals)
        batch_diff = _alone_vs_together(final, encoder, pairs, signals)
        invariant = quantize != "int8"
        if invariant and not batch_diff <= BATCH_INVARIANCE_ATOL:
            raise ArtifactError(
                f"the {quantize} graph scores a pair alone and in a batch {batch_diff:.3g} apart "
                f"(> {BATCH_INVARIANCE_ATOL}); it is not batch-invariant, check the quantizer's output"
            )
        all_metrics = dict(metrics or {})
        all_metrics["export_fp32_max_abs_diff"] = fp32_diff
        all_metrics["export_batch_max_abs_diff"] = batch_diff
        if quantize != "none":
            all_metrics["export_int8_max_abs_diff"] = float(np.max(np.abs(scores - torch_scores)))
        write_manifest(
            partial,
            version=version,
            parent=parent,
            method_chain=chain,
            metrics=all_metrics,
            input_spec=InputSpec(
                inputs=inputs,
                output=OUTPUT,
                max_length=max_length,
                pair_format=PAIR_FORMAT,
                signals=None if spec is None else SIGNALS.version,
                linear_file=None if linear is None else LINEAR_FILE,
                batch_invariant=True if invariant else None,
            ),
            reference=Reference(
                pairs=tuple(pairs),
                signals=None if signals is None else tuple(tuple(float(v) for v in row) for row in signals),
                scores=tuple(float(s) for s in scores),
                atol=reference_atol,
            ),
        )
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("wrote artifact %s (%s) to %s", version, " -> ".join(chain), out_dir)
    return out_dir
