"""report.json, report.md and pareto.png of a compress run, from the figures its record holds."""

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot loads

from rankstream.jobs.presets import GATE_TOLERANCE  # noqa: E402
from rankstream.jobs.runs import CompressRunRecord  # noqa: E402


def _rows(record: CompressRunRecord) -> list[dict[str, Any]]:
    teacher = record.variants["teacher-fp32"]
    rows = []
    for name, v in record.variants.items():
        q, s = v.valid, v.speed
        rows.append(
            {
                "variant": name,
                "role": v.role,
                "params": v.params,
                "size_mb": v.size_bytes / 1e6,
                "ndcg@10": q["ndcg@10"],
                "recall@10": q["recall@10"],
                "mrr": q["mrr"],
                "pairs_per_s": s["pairs_per_s"],
                "p50_ms": s["p50_batch_ms"],
                "p99_ms": s["p99_batch_ms"],
                "speedup": s["pairs_per_s"] / teacher.speed["pairs_per_s"],
                "ndcg_vs_teacher": q["ndcg@10"] / teacher.valid["ndcg@10"] if teacher.valid["ndcg@10"] else math.nan,
                "smaller": teacher.size_bytes / v.size_bytes,
                "gate": "pass" if v.gate.passed else "FAIL",
                "int8_cost": v.int8_cost_ndcg,
                "chain": " -> ".join(v.method_chain),
            }
        )
    return rows


def _plot(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for i, r in enumerate(sorted(rows, key=lambda r: r["pairs_per_s"])):
        marker = "s" if r["role"].endswith("teacher") else "o"
        ax.scatter(r["pairs_per_s"], r["ndcg@10"], marker=marker, s=45, zorder=3)
        # Alternate label sides: neighbours on the speed axis often have near-equal NDCG.
        offset = (5, 6) if i % 2 == 0 else (5, -12)
        ax.annotate(
            r["variant"], (r["pairs_per_s"], r["ndcg@10"]), textcoords="offset points", xytext=offset, fontsize=7
        )
    # The Pareto front: no other variant is both faster and better.
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: -r["pairs_per_s"]):
        if r["ndcg@10"] > best:
            front.append(r)
            best = r["ndcg@10"]
    xs, ys = [r["pairs_per_s"] for r in front], [r["ndcg@10"] for r in front]
    ax.plot(xs, ys, color="tab:red", alpha=0.4, zorder=2, label="Pareto front")
    styles = {"covisit": ("tab:gray", "--"), "popularity": ("tab:olive", ":")}
    for name, m in baselines.items():
        color, ls = styles.get(name, ("black", "-."))
        ax.axhline(m["ndcg@10"], color=color, linestyle=ls, linewidth=1, label=f"{name} order (no model)")
    ax.set_xscale("log")
    ax.set_xlabel("pairs/s (ONNX Runtime, 2 threads, batch 32) - log scale")
    ax.set_ylabel("NDCG@10 (valid split)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Long because it is one document: the markdown lines read top to bottom as the report does.
def write_report(root: Path, record: CompressRunRecord) -> dict[str, Path]:
    """Write the three report files into `root`; returns their paths."""
    root = Path(root)
    rows = _rows(record)
    baselines = record.baselines_valid
    name = record.preset_name
    head = record.signal_head
    windows = record.train_windows
    report = {
        "preset": name,
        "teacher": record.teacher_note,
        "run_id": record.run_id,
        "valid_instances": record.valid_instances,
        "valid_rankable": record.valid_rankable,
        "train_groups": record.train_groups,
        "train_pairs": record.train_pairs,
        "train_windows": [asdict(w) for w in windows],
        "signal_head": None if head is None else asdict(head),
        "gate_tolerance": GATE_TOLERANCE,
        "baselines_valid": baselines,
        "variants": rows,
        "timings_s": record.timings_s,
        "total_step_time_s": round(sum(record.timings_s.values()), 1),
    }
    paths = {"json": root / "report.json", "md": root / "report.md", "png": root / "pareto.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    _plot(rows, baselines, paths["png"], f"rankstream compress --preset {name} (run {record.run_id})")

    cov = baselines["covisit"]["ndcg@10"]
    source = (
        f"{len(windows)} windows at the end of the train split ({windows[0].start[:10]} to "
        f"{windows[-1].end[:10]}), each with tables built before it"
        if windows
        else "the train split"
    )
    signals = (
        f"Signals: `{head.version}` through a linear head fitted first (listwise, on every window list): "
        f"position prior x{head.prior_weight:.3f}, "
        + ", ".join(f"{n} {w:+.3f}" for n, w in zip(head.names, head.weight, strict=True))
        + " (weights per standard deviation). `signals-linear-fp32` is that linear scorer alone."
        if head
        else "Signals: none (text and position prior only)."
    )
    merge = record.settings.get("merge")
    # With a learned merge the lists are its picks, and "covisit" below is the order they come in.
    candidates = "co-visitation candidates" if merge is None else f"candidates of the learned merge {merge}"
    lines = [
        f"# Compression report: preset `{name}` (run {record.run_id})",
        "",
        f"Teacher: {record.teacher_note}.",
        "",
        f"Training: {record.train_pairs} pairs in {record.train_groups} candidate lists from {source}. "
        f"Evaluation: valid split, {record.valid_rankable} of {record.valid_instances} sampled baskets have a "
        f"positive among their 50 {candidates}; every order below ranks the same lists. Speed: "
        "ONNX Runtime, 2 threads, batches of 32 pairs padded per batch. All figures measured in this run.",
        "",
        signals,
        "",
        "| order | NDCG@10 | Recall@10 | MRR |",
        "| --- | --- | --- | --- |",
        *(
            f"| {n if merge is None or n != 'covisit' else 'covisit (the merge order)'} (no model) | "
            f"{m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr']:.4f} |"
            for n, m in baselines.items()
        ),
        "",
        "| variant | params | size MB | NDCG@10 | vs covisit | vs teacher | Recall@10 | MRR | pairs/s | speedup "
        "| p50 / p99 ms | smaller | INT8 cost | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cost = "" if r["int8_cost"] is None else f"{r['int8_cost'] * 100:+.2f} pt"
        lines.append(
            f"| {r['variant']} | {r['params'] / 1e6:.1f}M | {r['size_mb']:.1f} | {r['ndcg@10']:.4f} | "
            f"{(r['ndcg@10'] / cov - 1) * 100:+.1f}% | {r['ndcg_vs_teacher'] * 100:.1f}% | {r['recall@10']:.4f} | "
            f"{r['mrr']:.4f} | {r['pairs_per_s']:.0f} | {r['speedup']:.1f}x | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} | "
            f"{r['smaller']:.1f}x | {cost} | {r['gate']} |"
        )
    lines += ["", "Method chains:", ""]
    lines += [f"- `{r['variant']}`: {r['chain']}" for r in rows]
    lines += ["", f"Gate: NDCG@10 on valid within {GATE_TOLERANCE:.0%} of the teacher's (fp32).", ""]
    lines += ["Step times (s, summed over resumed invocations):", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in record.timings_s.items()]
    lines += ["", f"Total: {report['total_step_time_s']:.0f} s.", "", "![pareto](pareto.png)", ""]
    paths["md"].write_text("\n".join(lines))
    return paths
