"""The per-layer INT8 fallback: which encoder layers of a student to keep in fp32 so that INT8 costs at most
the preset's budget of valid NDCG@10."""

import json
import logging
from pathlib import Path

from rankstream.compression.export import export_onnx
from rankstream.evaluation.evalset import EvalSet
from rankstream.jobs.runs import FallbackTrials
from rankstream.stream.ranker import Ranker

log = logging.getLogger(__name__)


def int8_fallback(
    hf_dir: Path,
    trials_dir: Path,
    key: str,
    fp32_ndcg: float,
    valid: EvalSet,
    trials: FallbackTrials,
    *,
    budget: float,
    max_length: int,
) -> list[int]:
    """The layers to keep in fp32, most INT8-sensitive first, until INT8 costs at most `budget`.

    Sensitivity of a layer = valid NDCG@10 with only that layer left in fp32. Layers are added in that order;
    the first set within budget (or all but one layer) is returned. Every trial lands in `trials`.
    """
    n_layers = int(json.loads((Path(hf_dir) / "config.json").read_text())["num_hidden_layers"])
    trials_dir.mkdir(exist_ok=True)

    def trial(layers: list[int]) -> float:
        name = f"{key}-fp32-layers-{'-'.join(map(str, layers))}"
        out = trials_dir / name
        if not out.exists():
            export_onnx(hf_dir, out, version=name, quantize="int8", max_length=max_length, int8_fp32_layers=layers)
        return float(valid.quality(Ranker.load(out).score_lists)["ndcg@10"])

    single = {i: trial([i]) for i in range(n_layers)}
    trials.single = {str(i): v for i, v in single.items()}
    order = sorted(single, key=lambda i: -single[i])
    chosen: list[int] = []
    ndcg = float("nan")
    for i in order[: max(n_layers - 1, 1)]:
        chosen = sorted([*chosen, i])
        ndcg = single[i] if len(chosen) == 1 else trial(chosen)
        trials.cumulative[",".join(map(str, chosen))] = ndcg
        if fp32_ndcg - ndcg <= budget:
            break
    log.info("%s: INT8 fallback keeps layers %s in fp32 (NDCG@10 %.4f vs fp32 %.4f)", key, chosen, ndcg, fp32_ndcg)
    return chosen
