"""`rankstream build-model`: training pairs from the train split, then fine-tune, export, quantize, stamp."""

import logging
from datetime import UTC, datetime
from pathlib import Path

from rankstream.compression.build import Preset, build_model
from rankstream.compression.pairs import make_pairs
from rankstream.data.instances import build_instances
from rankstream.data.prepare import Prepared
from rankstream.evaluate import evaluate
from rankstream.stream.artifact import stamp_metrics

log = logging.getLogger(__name__)

TRAIN_INSTANCES = {"demo": 3000, "tiny": 200}
VALID_INSTANCES = 400
N_CANDIDATES = 50


def build_from_prepared(data_dir: Path, out_root: Path, *, preset: Preset = "demo") -> Path:
    """Build a ranker artifact from prepared data; its manifest carries the valid-split metrics."""
    prepared = Prepared.load(data_dir)
    train = prepared.frames[0]
    instances = build_instances(
        prepared.interactions,
        train,
        prepared.neighbours,
        prepared.trending,
        n_candidates=N_CANDIDATES,
        max_instances=TRAIN_INSTANCES[preset],
        seed=0,
    )
    pairs = make_pairs(instances, prepared.catalog, neg_per_instance=8, top_negatives=0)
    log.info("training on %d pairs from %d train instances", len(pairs), len(instances))
    version = "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    artifact = build_model(pairs, out_root, version=version, preset=preset)
    result = evaluate(data_dir, artifact, split="valid", max_instances=VALID_INSTANCES)
    stamp_metrics(artifact, {f"valid_{k}": v for k, v in result["model"].items()})
    return artifact
