"""The model library: listwise training and distillation, pruning, vocabulary trimming, export to ONNX,
quantization, the accuracy gate. torch and transformers live here only; no Kafka, Redis or CLI."""

from rankstream.compression.distil import TrainConfig, drop_layers, teacher_scores, train_listwise
from rankstream.compression.export import export_onnx
from rankstream.compression.gate import GateResult, accuracy_gate
from rankstream.compression.model import PositionPriorBert, load_cross_encoder
from rankstream.compression.pairs import LabelledPair, make_groups
from rankstream.compression.prune import prune_ffn
from rankstream.compression.signal_head import SignalHead, fit_signal_head

__all__ = [
    "GateResult",
    "LabelledPair",
    "PositionPriorBert",
    "SignalHead",
    "TrainConfig",
    "accuracy_gate",
    "drop_layers",
    "export_onnx",
    "fit_signal_head",
    "load_cross_encoder",
    "make_groups",
    "prune_ffn",
    "teacher_scores",
    "train_listwise",
]
