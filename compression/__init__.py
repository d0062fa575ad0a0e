"""Offline model jobs: fine-tune, distil, export to ONNX, quantize. torch and transformers live here only."""

from rankstream.compression.build import build_model
from rankstream.compression.export import export_onnx
from rankstream.compression.pairs import LabelledPair, make_pairs
from rankstream.compression.train import fine_tune

__all__ = ["LabelledPair", "build_model", "export_onnx", "fine_tune", "make_pairs"]
