"""`rankstream build-model`: training pairs with signals from the train split's last windows, the linear
signal head fitted on them, then fine-tune from it, export, quantize, stamp."""

import logging
from datetime import UTC, datetime
from pathlib import Path

from rankstream.compression.build import Preset, build_model
from rankstream.compression.pairs import make_pairs
from rankstream.data.prepare import Prepared
from rankstream.evaluation.evaluate import evaluate
from rankstream.jobs.training_data import signal_training_data
from rankstream.stream.artifact import stamp_metrics

log = logging.getLogger(__name__)

TRAIN_INSTANCES = {"demo": 3000, "tiny": 200}
# Training windows (count, days) at the end of the train split; tiny fits small test data.
WINDOWS = {"demo": (4, 30), "tiny": (2, 7)}
VALID_INSTANCES = 400


def build_from_prepared(data_dir: Path, out_root: Path, *, preset: Preset = "demo") -> Path:
    """Build a ranker artifact from prepared data; its manifest carries the valid-split metrics."""
    prepared = Prepared.load(data_dir)
    windows, days = WINDOWS[preset]
    data = signal_training_data(prepared, windows=windows, days=days, max_instances=TRAIN_INSTANCES[preset])
    pairs = make_pairs(data.instances, prepared.catalog, neg_per_instance=8, top_negatives=0, signals=data.signals)
    log.info("training on %d pairs from %d window instances", len(pairs), len(data.instances))
    version = "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    artifact = build_model(pairs, out_root, version=version, preset=preset, prior=data.prior, head=data.head)
    result = evaluate(data_dir, artifact, split="valid", max_instances=VALID_INSTANCES)
    stamp_metrics(artifact, {f"valid_{k}": v for k, v in result["model"].items()})
    return artifact
