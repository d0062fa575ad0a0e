"""`rankstream eval`: a model against the non-neural orders on the same held-out candidate lists."""

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rankstream.data.instances import build_instances
from rankstream.data.prepare import Prepared
from rankstream.ranking_metrics import MetricSums
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.ranker import Ranker

log = logging.getLogger(__name__)

N_CANDIDATES = 50
_CHUNK = 64  # instances scored together: large enough for full batches, small enough for the bar


def evaluate(
    data_dir: Path, model_dir: Path, *, split: str = "test", max_instances: int | None = 1000, seed: int = 0
) -> dict[str, Any]:
    """NDCG@10, Recall@10 and MRR of the model, the co-visitation order and popularity order."""
    prepared = Prepared.load(data_dir)
    frames = dict(zip(("train", "valid", "test"), prepared.frames, strict=True))
    catalog = prepared.catalog
    popularity = frames["train"]["item_id"].value_counts().to_dict()
    instances = build_instances(
        prepared.interactions,
        frames[split],
        prepared.neighbours,
        prepared.trending,
        n_candidates=N_CANDIDATES,
        max_instances=max_instances,
        seed=seed,
    )
    ranker = Ranker.load(model_dir)
    sums = {"model": MetricSums(), "covisit": MetricSums(), "popularity": MetricSums()}
    rankable = []
    for inst in instances:
        cands = [c for c in inst.candidates if c in catalog]
        relevant = inst.positives.intersection(cands)
        if relevant:
            rankable.append((inst, cands, relevant))
    scoring_s = 0.0
    n_pairs = 0
    for start in tqdm(range(0, len(rankable), _CHUNK), desc=f"eval {split}", unit="chunk", leave=False):
        chunk = rankable[start : start + _CHUNK]
        lists = []
        for inst, cands, _ in chunk:
            query = history_text([catalog[i] for i in inst.history if i in catalog])
            lists.append([(query, candidate_text(catalog[c], r)) for r, c in enumerate(cands)])
        t0 = time.perf_counter()
        scores = ranker.score_lists(lists)  # one batch per instance, as the scorer does per user
        scoring_s += time.perf_counter() - t0
        n_pairs += sum(len(x) for x in lists)
        for (_inst, cands, relevant), s in zip(chunk, scores, strict=True):
            by_model = [cands[i] for i in sorted(range(len(cands)), key=lambda i: -s[i])]
            sums["model"].add(by_model, relevant)
            sums["covisit"].add(cands, relevant)
            sums["popularity"].add(sorted(cands, key=lambda c: -popularity.get(c, 0)), relevant)
    return {
        "split": split,
        "model_version": ranker.version,
        "instances": len(instances),
        "rankable_instances": len(rankable),
        "candidates_per_instance": N_CANDIDATES,
        "pairs_per_s": n_pairs / scoring_s if scoring_s else 0.0,
        **{name: s.means() for name, s in sums.items()},
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
