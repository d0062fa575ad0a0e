"""`rankstream eval`: a model against the non-neural orders on the same held-out candidate lists."""

from pathlib import Path
from typing import Any

from rankstream.evaluation.evalset import N_CANDIDATES, EvalSet
from rankstream.stream.ranker import Ranker


def evaluate(
    data_dir: Path, model_dir: Path, *, split: str = "test", max_instances: int | None = 1000, seed: int = 0
) -> dict[str, Any]:
    """NDCG@10, Recall@10 and MRR of the model, the co-visitation order and popularity order."""
    evalset = EvalSet.build(data_dir, split, max_instances=max_instances, seed=seed)
    ranker = Ranker.load(model_dir)
    # One batch per instance, as the scorer scores one batch per user.
    model = evalset.quality(ranker.score_lists)
    return {
        "split": split,
        "model_version": ranker.version,
        "instances": evalset.instances,
        "rankable_instances": len(evalset.lists),
        "candidates_per_instance": N_CANDIDATES,
        "pairs_per_s": model.pop("per_list_pairs_per_s"),
        "model": model,
        **evalset.baselines(),
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a small table a person can read."""
    rows = [f"{'order':<12} {'NDCG@10':>8} {'Recall@10':>10} {'MRR':>8}"]
    for name in ("model", "covisit", "popularity"):
        m = result[name]
        rows.append(f"{name:<12} {m['ndcg@10']:>8.4f} {m['recall@10']:>10.4f} {m['mrr']:>8.4f}")
    cov = result["covisit"]["ndcg@10"]
    rel = (result["model"]["ndcg@10"] / cov - 1) * 100 if cov else float("nan")
    rows.append(
        f"model {result['model_version']} on {result['split']}: {result['rankable_instances']} of "
        f"{result['instances']} instances have a positive among the {result['candidates_per_instance']} "
        f"candidates; model vs co-visitation NDCG@10 {rel:+.1f}%; scoring {result['pairs_per_s']:.0f} pairs/s"
    )
    return "\n".join(rows)
