"""`rankstream bench model`: every artifact of a compress run, the teacher and the non-neural orders,
measured in one run on the same test lists. Reads artifacts; never trains.
"""

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rankstream.evaluation.evalset import EvalSet, throughput
from rankstream.jobs.runs import CompressRunRecord
from rankstream.stream.errors import ConfigError
from rankstream.stream.ranker import PairEncoder, Ranker

log = logging.getLogger(__name__)

SPEED_PAIRS = 512  # whole batches, per round
SPEED_ROUNDS = 3
TORCH_SPEED_PAIRS = 256


def _torch_speed(
    hf_dir: Path, pairs: list[tuple[str, str]], signals: np.ndarray | None, max_length: int
) -> dict[str, float]:
    """The teacher checkpoint in torch eager mode (fp32, 2 threads), timed like the ONNX graphs."""
    import torch  # the compression extra; bench model is an offline tool

    from rankstream.compression.model import load_cross_encoder, signal_spec

    torch.set_num_threads(2)
    model = load_cross_encoder(hf_dir).eval()
    encoder = PairEncoder(Path(hf_dir) / "tokenizer.json", max_length)
    if signal_spec(model) is None:
        signals = None

    def score(batch: list[tuple[str, str]], rows: np.ndarray | None = None) -> np.ndarray:
        enc = {k: torch.from_numpy(v) for k, v in encoder.encode(batch).items()}
        if rows is not None:
            enc["signals"] = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        with torch.no_grad():
            return model(**enc).logits.reshape(-1).numpy()

    return throughput(score, pairs, signals=signals, batch_size=32, warmup=1)


# Long because quality, interleaved speed rounds and the ratios must see the same rankers in one run.
def bench_model(
    run_dir: Path,
    data_dir: Path,
    *,
    split: str = "test",
    max_instances: int | None = 500,
    torch_eager: bool = True,
    rerank_top: int = 20,
) -> dict[str, Any]:
    """Quality and speed of every variant of the compress run in `run_dir` and of both baselines on `split`; with
    `rerank_top`, also each student that carries a linear part when it cross-encodes only that many
    candidates per list (what `RANKSTREAM_RERANK_TOP` does in the scorer)."""
    record = CompressRunRecord.load(run_dir)
    variants = record.variants
    if "teacher-fp32" not in variants or not variants["teacher-fp32"].valid:
        raise ConfigError(f"{run_dir}: the compress run has not finished (no evaluated teacher); rerun it to resume")
    evalset = EvalSet.build(data_dir, split, max_instances=max_instances)
    speed_pairs = evalset.speed_pairs(SPEED_PAIRS)
    speed_signals = evalset.speed_signals(SPEED_PAIRS)
    out: dict[str, Any] = {
        "split": split,
        "instances": evalset.instances,
        "rankable_instances": len(evalset.lists),
        "candidates_per_instance": 50,
        "threads": 2,
        "batch_size": 32,
        "cpu_count": os.cpu_count(),
        "teacher": record.teacher_note,
        "baselines": evalset.baselines(),
        "variants": {},
    }
    rankers = {}
    for name, v in variants.items():
        artifact = v.artifact
        ranker = rankers[name] = Ranker.load(artifact, threads=2, batch_size=32)
        quality = evalset.quality(ranker.score_lists)
        out["variants"][name] = {
            "engine": "onnxruntime-cpu",
            "method_chain": list(ranker.manifest.method_chain),
            "params": v.params,
            "size_bytes": v.size_bytes,
            **quality,
        }
        log.info("%s: NDCG@10 %.4f", name, quality["ndcg@10"])
    # Speed in interleaved rounds, each variant once per round, keeping each one's median round:
    # a neighbour process slowing the machine for a while then costs every variant alike.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in rankers}
    for _ in range(SPEED_ROUNDS):
        for name, ranker in rankers.items():
            sig = speed_signals if ranker.signals is not None else None
            rounds[name].append(throughput(ranker.score, speed_pairs, signals=sig, batch_size=32))
    for name, measured in rounds.items():
        median = sorted(measured, key=lambda m: m["pairs_per_s"])[len(measured) // 2]
        out["variants"][name] |= median | {"speed_rounds": float(len(measured))}
        log.info("%s: %.0f pairs/s (median of %d rounds)", name, median["pairs_per_s"], len(measured))
    teacher_hf = variants["teacher-fp32"].hf_dir
    if torch_eager and (teacher_hf / "config.json").exists():
        sig = None if speed_signals is None else speed_signals[:TORCH_SPEED_PAIRS]
        max_length = rankers["teacher-fp32"].manifest.input_spec.max_length
        speed = _torch_speed(teacher_hf, speed_pairs[:TORCH_SPEED_PAIRS], sig, max_length)
        out["teacher_torch_eager"] = {"engine": "torch-eager-fp32", **speed}
    if rerank_top:
        out["rerank_top"] = {"top": rerank_top, "variants": _rerank(evalset, rankers, rerank_top)}
    t = out["variants"]["teacher-fp32"]
    for name, r in out.get("rerank_top", {}).get("variants", {}).items():
        full = out["variants"][name]
        r["ndcg_vs_full"] = r["ndcg@10"] / full["ndcg@10"] if full["ndcg@10"] else float("nan")
        r["ndcg_vs_teacher"] = r["ndcg@10"] / t["ndcg@10"] if t["ndcg@10"] else float("nan")
        # Whole lists per second, both ways, measured in the same run: what pre-selection buys per user.
        r["lists_speedup"] = r["per_list_pairs_per_s"] / full["per_list_pairs_per_s"]
    for v in out["variants"].values():
        v["speedup_vs_teacher"] = v["pairs_per_s"] / t["pairs_per_s"]
        v["ndcg_vs_teacher"] = v["ndcg@10"] / t["ndcg@10"] if t["ndcg@10"] else float("nan")
        v["smaller_than_teacher"] = t["size_bytes"] / v["size_bytes"]
        v["ndcg_vs_covisit"] = v["ndcg@10"] / out["baselines"]["covisit"]["ndcg@10"] - 1
    return out


def _rerank(evalset: EvalSet, rankers: dict[str, Ranker], top: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, ranker in rankers.items():
        if ranker.linear is None or not name.startswith("student-"):
            continue

        def score_lists(lists: Any, signals: Any = None, ranker: Ranker = ranker) -> list[np.ndarray]:
            return ranker.score_lists(lists, signals, top=top)

        out[name] = evalset.quality(score_lists)
        log.info("%s, cross-encoding the top %d: NDCG@10 %.4f", name, top, out[name]["ndcg@10"])
    return out


def format_bench(result: dict[str, Any]) -> str:
    """The bench result as a table a person can read."""
    head = (
        f"{'variant':<32} {'params':>7} {'MB':>6} {'NDCG@10':>8} {'R@10':>7} {'MRR':>7} {'pairs/s':>8} "
        f"{'p50ms':>6} {'p99ms':>6} {'xspeed':>7} {'%teach':>7} {'xsmall':>7}"
    )
    rows = [head]
    for name, m in result["baselines"].items():
        rows.append(
            f"{name + ' order':<32} {'-':>7} {'-':>6} {m['ndcg@10']:>8.4f} {m['recall@10']:>7.4f} {m['mrr']:>7.4f}"
        )
    for name, v in result["variants"].items():
        rows.append(
            f"{name:<32} {v['params'] / 1e6:>6.1f}M {v['size_bytes'] / 1e6:>6.1f} {v['ndcg@10']:>8.4f} "
            f"{v['recall@10']:>7.4f} {v['mrr']:>7.4f} {v['pairs_per_s']:>8.0f} {v['p50_batch_ms']:>6.0f} "
            f"{v['p99_batch_ms']:>6.0f} {v['speedup_vs_teacher']:>6.1f}x {v['ndcg_vs_teacher'] * 100:>6.1f}% "
            f"{v['smaller_than_teacher']:>6.1f}x"
        )
    if "teacher_torch_eager" in result:
        te = result["teacher_torch_eager"]
        rows.append(
            f"{'teacher (torch eager)':<32} {'':>7} {'':>6} {'':>8} {'':>7} {'':>7} {te['pairs_per_s']:>8.0f} "
            f"{te['p50_batch_ms']:>6.0f} {te['p99_batch_ms']:>6.0f}"
        )
    if result.get("rerank_top"):
        top = result["rerank_top"]["top"]
        rows.append(f"students cross-encoding only the top {top} candidates of their linear part:")
        for name, r in result["rerank_top"]["variants"].items():
            rows.append(
                f"  {name + f' @top{top}':<30} NDCG@10 {r['ndcg@10']:.4f} ({r['ndcg_vs_full'] * 100:.1f}% of the "
                f"full list, {r['ndcg_vs_teacher'] * 100:.1f}% of the teacher), whole lists {r['lists_speedup']:.2f}x "
                "as fast"
            )
    rows.append(
        f"{result['split']} split: {result['rankable_instances']} of {result['instances']} baskets have a positive "
        f"among the {result['candidates_per_instance']} candidates; speed: ONNX Runtime CPU, {result['threads']} "
        f"threads, batch {result['batch_size']}, padded per batch. Teacher: {result['teacher']}."
    )
    return "\n".join(rows)
