"""Calibrated static INT8: activation scales fixed at build time from training lists, so a pair's score no
longer depends on the pairs it shares an ONNX Runtime batch with.

Dynamic INT8 (`quantize_dynamic`) measures every activation's range on the batch in hand; static QDQ INT8
measures it once here, on lists the students are distilled on, tokenized and padded as the scorer does,
and writes the scales into the graph as constants.
"""

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from rankstream.compression.pairs import LabelledPair, group_signals
from rankstream.stream.ranker import SIGNALS_INPUT, PairEncoder

log = logging.getLogger(__name__)

STATIC_CHAIN = "quantize:int8-static-qdq-per-channel"
ActivationType = Literal["uint8", "int8"]
Calibrator = Literal["minmax", "percentile"]
_ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
# Training lists that calibrate the activation scales: enough to see the pair lengths and signal ranges
# the scorer meets, few enough that calibration stays a small step of an export.
CALIBRATION_LISTS = 64


def calibration_lists(
    groups: Sequence[Sequence[LabelledPair]], n: int = CALIBRATION_LISTS, seed: int = 0
) -> list[list[LabelledPair]]:
    """`n` of the training lists (all when there are fewer), picked with a fixed seed, in their order."""
    if len(groups) <= n:
        return [list(g) for g in groups if g]
    picked = sorted(np.random.default_rng(seed).choice(len(groups), size=n, replace=False).tolist())
    return [list(groups[i]) for i in picked if groups[i]]


class ListReader(CalibrationDataReader):
    """Feeds one training list per calibration batch, encoded and padded as the scorer encodes a user's list."""

    def __init__(self, lists: Sequence[Sequence[LabelledPair]], encoder: PairEncoder, inputs: Sequence[str]) -> None:
        self._feeds = self._encode(lists, encoder, inputs)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    @staticmethod
    def _encode(
        lists: Sequence[Sequence[LabelledPair]], encoder: PairEncoder, inputs: Sequence[str]
    ) -> list[dict[str, np.ndarray]]:
        feeds = []
        for group in lists:
            encoded = encoder.encode([(p.query, p.candidate) for p in group])
            feed = {name: encoded[name] for name in inputs if name != SIGNALS_INPUT}
            if SIGNALS_INPUT in inputs:
                rows = group_signals(group)
                if rows is None:
                    raise ValueError("this model reads signals, but the calibration lists carry none")
                feed[SIGNALS_INPUT] = rows
            feeds.append(feed)
        return feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_static_int8(
    fp32: Path,
    out: Path,
    reader: ListReader,
    *,
    nodes_to_exclude: Sequence[str] = (),
    activations: ActivationType = "uint8",
    calibrator: Calibrator = "minmax",
) -> None:
    """Write `out`: the optimized fp32 graph `fp32` with per-channel INT8 weights and calibrated INT8
    activations around every MatMul (QDQ), except `nodes_to_exclude`.

    Only MatMuls are quantized: they carry the weights; the fused Attention, LayerNorm and GELU kernels
    stay fp32, as the position prior and the signal head do. MinMax keeps every calibrated value inside
    the range, where Percentile would clip BERT's few large activations, which carry the ranking.
    """
    with tempfile.TemporaryDirectory(prefix="rankstream-static-") as tmp:
        shaped = Path(tmp) / "shaped.onnx"
        # The quantizer only places activation QDQ pairs on tensors whose type it knows; the fused graph's
        # contrib ops (Attention, SkipLayerNormalization) leave them untyped until shapes are inferred.
        # The graph is already optimized, so the pre-processor's own ORT optimization pass is skipped.
        quant_pre_process(str(fp32), str(shaped), skip_optimization=True)
        quantize_static(
            model_input=str(shaped),
            model_output=str(out),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=_ACTIVATIONS[activations],
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=_METHODS[calibrator],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    log.info("static INT8 (%s activations, %s calibration) written to %s", activations, calibrator, out)
