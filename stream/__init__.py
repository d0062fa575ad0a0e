"""The serving runtime: Kafka click events in, ONNX Runtime ranking, top-k lists out to Redis.

Nothing under this package imports torch or transformers' model code.
"""

from rankstream.stream.artifact import Manifest, load_manifest
from rankstream.stream.candidates import covisit_candidates
from rankstream.stream.errors import ArtifactError, ConfigError, RankstreamError
from rankstream.stream.events import ClickEvent
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.signals import SIGNALS, ItemStats, candidate_signals

__all__ = [
    "SIGNALS",
    "ArtifactError",
    "ClickEvent",
    "ConfigError",
    "ItemStats",
    "Manifest",
    "RankstreamError",
    "candidate_signals",
    "candidate_text",
    "covisit_candidates",
    "history_text",
    "load_manifest",
]
