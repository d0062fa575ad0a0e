"""Offline model jobs: fine-tune, distil, prune, export to ONNX, quantize. torch and transformers live here only."""

from rankstream.compression.build import build_model
from rankstream.compression.distil import TrainConfig, drop_layers, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.gate import GateResult, accuracy_gate
from rankstream.compression.model import PositionPriorBert, load_cross_encoder
from rankstream.compression.pairs import LabelledPair, make_groups, make_pairs
from rankstream.compression.prune import prune_ffn
from rankstream.compression.signal_head import SignalHead, fit_signal_head
from rankstream.compression.train import fine_tune

__all__ = [
    "GateResult",
    "LabelledPair",
    "PositionPriorBert",
    "SignalHead",
    "TrainConfig",
    "accuracy_gate",
    "build_model",
    "drop_layers",
    "export_onnx",
    "fine_tune",
    "fit_signal_head",
    "load_cross_encoder",
    "make_groups",
    "make_pairs",
    "prune_ffn",
    "train_listwise",
]
