"""`rankstream bench fusions`: one checkpoint exported twice, with ORT's SkipLayerNormalization and
BiasGelu kernels and with them split back (`compression.unfuse`, the default), then both graphs timed side
by side on the same users' lists, scored as the scorer scores them (one call per user, pre-selected as
`RANKSTREAM_RERANK_TOP` or the artifact says).

Rounds alternate which graph goes first, and each round's ratio is taken on its own, so a machine that
slows down for a while moves both sides of a ratio together.
"""

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rankstream.bench.results import Record
from rankstream.evaluation.evalset import EvalSet
from rankstream.jobs.presets import MAX_LENGTH
from rankstream.stream.ranker import Ranker
from rankstream.stream.scoring import rerank_top_for
from rankstream.stream.settings import Settings

SPEED_ROUNDS = 9
_KERNELS = ("SkipLayerNormalization", "BiasGelu", "LayerNormalization", "Gelu")


@dataclass(frozen=True)
class GraphSpeed(Record):
    """Milliseconds per user (medians over rounds) at `threads` ONNX Runtime threads; `ratio`: fused time
    over unfused time, the median of the per-round ratios, with their range."""

    threads: int
    fused_ms: float
    unfused_ms: float
    ratio: float
    ratio_min: float
    ratio_max: float


@dataclass(frozen=True)
class FusionsBench(Record):
    checkpoint: str
    quantize: str
    users: int
    pairs_per_user: float  # cross-encoded, after pre-selection
    rerank_top: int
    rounds: int
    kernels: dict[str, dict[str, int]]  # graph -> op type -> nodes
    max_abs_score_diff: float  # between the two graphs, over every pair of every list
    ndcg_at_10: dict[str, float]  # graph -> NDCG@10 on the lists
    speed: tuple[GraphSpeed, ...]


def _kernels(artifact: Path) -> dict[str, int]:
    ops = Counter(n.op_type for n in onnx.load(str(artifact / "model.onnx")).graph.node)
    return {k: ops[k] for k in _KERNELS}


def _time(rankers: dict[str, Ranker], lists: EvalSet, top: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round for each ranker; the first ranker goes first in even rounds, last in odd ones."""
    names = list(rankers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm both before any round counts
        rankers[name].score_lists(lists.lists, lists.signals, top=top)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            rankers[name].score_lists(lists.lists, lists.signals, top=top)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def bench_fusions(
    checkpoint: Path,
    data_dir: Path,
    *,
    users: int = 300,
    split: str = "test",
    quantize: str = "int8",
    threads: tuple[int, ...] = (1, 2),
    rounds: int = SPEED_ROUNDS,
) -> FusionsBench:
    """Export `checkpoint` (a fine-tuned cross-encoder folder) both ways and time both graphs on up to `users`
    rankable lists of `split`."""
    from rankstream.compression.export import export_onnx  # torch: the compression extra, offline only

    settings = Settings()  # the pre-selection a scorer with this environment would use
    lists = EvalSet.build(data_dir, split, max_instances=users)
    if not lists.lists:
        raise ValueError(f"no rankable lists in the {split} split of {data_dir}")
    with tempfile.TemporaryDirectory(prefix="rankstream-bench-fusions-") as tmp:
        graphs = {}
        for name, unfuse in (("fused", False), ("unfused", True)):
            graphs[name] = export_onnx(
                checkpoint,
                Path(tmp) / name,
                version=f"bench-fusions-{name}",
                quantize=quantize,  # type: ignore[arg-type]
                max_length=MAX_LENGTH,
                unfuse=unfuse,
            )
        speed, scores, ndcg, top, pairs = [], {}, {}, 0, 0
        for n in threads:
            rankers = {name: Ranker.load(path, threads=n) for name, path in graphs.items()}
            top = rerank_top_for(settings, rankers["unfused"])
            if not scores:
                for name, ranker in rankers.items():
                    scores[name] = got = ranker.score_lists(lists.lists, lists.signals, top=top)
                    ndcg[name] = lists.quality(lambda *_, s=got: s)["ndcg@10"]
                pairs = sum(min(len(x), top) if top else len(x) for x in lists.lists)
            seconds = _time(rankers, lists, top, rounds)
            per_round = [f / u for f, u in zip(seconds["fused"], seconds["unfused"], strict=True)]
            speed.append(
                GraphSpeed(
                    threads=n,
                    fused_ms=round(statistics.median(seconds["fused"]) / len(lists.lists) * 1e3, 3),
                    unfused_ms=round(statistics.median(seconds["unfused"]) / len(lists.lists) * 1e3, 3),
                    ratio=round(statistics.median(per_round), 3),
                    ratio_min=round(min(per_round), 3),
                    ratio_max=round(max(per_round), 3),
                )
            )
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(scores["fused"], scores["unfused"], strict=True))
        return FusionsBench(
            checkpoint=str(checkpoint),
            quantize=quantize,
            users=len(lists.lists),
            pairs_per_user=round(pairs / len(lists.lists), 2),
            rerank_top=top,
            rounds=rounds,
            kernels={name: _kernels(path) for name, path in graphs.items()},
            max_abs_score_diff=diff,
            ndcg_at_10={name: round(v, 4) for name, v in ndcg.items()},
            speed=tuple(speed),
        )


def format_fusions(r: FusionsBench) -> str:
    kernels = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in ops.items() if v) for name, ops in r.kernels.items()
    )
    lines = [
        f"{r.checkpoint} exported {r.quantize} twice; {r.users} users of {r.pairs_per_user} pairs each "
        f"(pre-selection {r.rerank_top or 'off'}), {r.rounds} rounds",
        f"graphs: {kernels}",
        f"scores differ by at most {r.max_abs_score_diff:.3g}; NDCG@10 fused {r.ndcg_at_10['fused']:.4f}, "
        f"unfused {r.ndcg_at_10['unfused']:.4f}",
        "",
        "| threads | fused ms/user | unfused ms/user | fused / unfused [min, max] |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {s.threads} | {s.fused_ms:.2f} | {s.unfused_ms:.2f} "
        f"| ×{s.ratio:.2f} [{s.ratio_min:.2f}, {s.ratio_max:.2f}] |"
        for s in r.speed
    ]
    return "\n".join(lines)
