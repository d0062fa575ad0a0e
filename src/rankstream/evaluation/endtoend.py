"""End-to-end quality on every eligible basket of a split (`rankstream eval --end-to-end`): what a user
would have been shown, against everything new they bought.

Definitions (also in docs/results.md, "End to end on all test baskets"):

- A basket is what one user bought at one time. Its positives are its items not already in the user's
  history (everything they bought before it, in any split). A basket whose user has no history, or with
  no new item, is not eligible; every eligible basket counts, none is sampled.
- Each order is a list of up to 50 candidates, those with a catalog title (`in_catalog`, as served):
  `covisit-frozen`: `covisit_candidates` over prepare's train-only neighbours and trending;
  `covisit-live`: the same function over the live tables just before the basket (a `LiveReplay` of 4
  shares moved by every earlier event: what the scorer reads from Redis at that moment);
  `model-live`: the live candidates re-ordered by a model fed their live signals at the basket's time,
  its linear part pre-selecting the top `rerank_top_for` candidates for the cross-encoder, the rest
  following in the linear part's order (`Ranker.score_lists`, as the scorer calls it).
  `model-live-no-text`: the text ablation, the same candidates and signals ordered by that linear part
  alone (the cross-encoder's text at zero); JSON `text_ablation` holds both NDCG@10s.
  With item vectors given (`--text`): `text-pretrained`, the text neighbours of the user's newest items;
  `merged-pretrained`, `covisit-live` and those neighbours merged; `covisit-live-cosine`, the live
  candidates re-ordered by their text similarity to the user (`rankstream.evaluation.text` defines all three).
  With vectors from a bi-encoder fine-tuned on co-purchase (`--encoder DIR`), the same three orders are
  named `text-tuned`, `merged-tuned` and `covisit-live-cosine-tuned`.
  With a learned merge given (`--merge DIR`, `stream.retrieval.MergeHead`): `merged-learned`, the 50
  candidates its head picks from the pool of co-visitation candidates and text neighbours, in its order
  (`rankstream.evaluation.merge`, from the same live walk); `model-merged`, the model re-ordering those
  candidates with their signal rows, as a scorer with RANKSTREAM_MERGE_DIR does; `model-merged-no-text`,
  its linear part alone on them (JSON `text_ablation_merged`).
- ndcg@10, recall@10, mrr: of the order against ALL positives, averaged over baskets. A positive that is
  not among the candidates is a miss; the ideal DCG counts min(10, |positives|) hits.
- candidate_recall@50: mean over baskets of |positives ∩ candidates| / |positives|.
- cold_reached / warm_reached: of all positives pooled over baskets, those whose item never sold in the
  train split / did, the share that is among the candidates.
- open baskets (`open_baskets` > 0): the same orders on up to that many open states of each test basket
  (`eligible_baskets`: the basket after its first k lines, k drawn with a fixed seed; those lines are the
  newest history, the rest of the basket the positives, the tables those just before the basket), whose
  user may have no earlier history. Most lists a scorer writes are read in such a state (the next event is
  the basket's next line), so this slice stands for what `bench live` counts per event; the headline
  figures above are whole baskets only.
- ci95: the 2.5th and 97.5th percentiles over `RESAMPLES` bootstrap resamples of the baskets (fixed seed).
  A paired ratio is mean(a) / mean(b) over the same baskets, its interval from the same resamples.
"""

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from rankstream.data.instances import Instance
from rankstream.data.live_instances import PARTITIONS, LiveInstances, live_instances
from rankstream.data.prepare import Prepared
from rankstream.evaluation.merge import merged_orders, pooled_baskets
from rankstream.evaluation.metrics import ndcg_at, recall_at, reciprocal_rank
from rankstream.evaluation.text import PRETRAINED, TUNED, ItemVectors, OrderNames, TextNote, text_orders
from rankstream.stream.artifact import load_manifest
from rankstream.stream.batch import top_k
from rankstream.stream.candidates import covisit_candidates, in_catalog
from rankstream.stream.errors import ConfigError
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.linear import LinearPart
from rankstream.stream.live import LiveParams
from rankstream.stream.ranker import Ranker
from rankstream.stream.retrieval import MergeHead
from rankstream.stream.scoring import rerank_top_for
from rankstream.stream.service import resolve_model_dir
from rankstream.stream.settings import Settings
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

N_CANDIDATES = 50
RESAMPLES = 1000
SEED = 0
FROZEN, LIVE, MODEL = "covisit-frozen", "covisit-live", "model-live"
# The text ablation: the same model with its text part at zero, i.e. its linear part alone (position prior +
# signal head) ordering the same live candidates with the same signals.
NO_TEXT = "model-live-no-text"
# The learned merge (`--merge DIR`): its candidates in its own order, and the model's order of them.
MERGED_LEARNED, MODEL_MERGED = "merged-learned", "model-merged"
MODEL_MERGED_NO_TEXT = "model-merged-no-text"  # the text ablation on the merge's candidates
# `--model-frozen`: the same model on the train split's tables, seeded and never moved (histories still grow):
# what `bench live`'s frozen arm serves, so model-live / model-frozen is that benchmark's ratio offline.
MODEL_FROZEN = "model-frozen"
MEAN_METRICS = ("ndcg@10", "recall@10", "mrr", "candidate_recall@50")
POOLED_METRICS = ("cold_reached", "warm_reached")
PAIRS = ((LIVE, FROZEN), (MODEL, LIVE), (MODEL, FROZEN), (MODEL, NO_TEXT), (MODEL, MODEL_FROZEN))
PAIRED_METRICS = ("ndcg@10", "recall@10", "candidate_recall@50")
# Text's case rests on reaching items co-visitation cannot, new ones above all: its pairs add that share.
TEXT_PAIRS = (
    *((name, LIVE) for names in (PRETRAINED, TUNED) for name in (names.text, names.merged, names.cosine)),
    (MERGED_LEARNED, LIVE),
    (MODEL_MERGED, LIVE),
    (MODEL_MERGED, MODEL),
    (MODEL_MERGED, MODEL_MERGED_NO_TEXT),
)
TEXT_PAIRED_METRICS = (*PAIRED_METRICS, "cold_reached")

Pairs = Sequence[tuple[str, str]]


class ListScorer(Protocol):
    """What the evaluation needs of a model: `Ranker` is one."""

    version: str
    signals: str | None

    def score_lists(
        self, lists: Sequence[Pairs], signals: Sequence[np.ndarray] | None = None, *, top: int = 0
    ) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class BasketScores:
    """One order's outcome on every basket (arrays aligned with the baskets)."""

    ndcg: np.ndarray
    recall: np.ndarray
    mrr: np.ndarray
    candidate_recall: np.ndarray
    cold_reached: np.ndarray  # per basket: cold positives among the candidates
    cold: np.ndarray  # per basket: cold positives
    warm_reached: np.ndarray
    warm: np.ndarray

    @classmethod
    def of(
        cls,
        orders: Sequence[Sequence[str]],
        positives: Sequence[frozenset[str]],
        sold_in_train: Collection[str],
    ) -> "BasketScores":
        """Each basket's metrics for its order (best first; its items are the candidates)."""
        cols: dict[str, list[float]] = {k: [] for k in ("ndcg", "recall", "mrr", "cand", "cr", "c", "wr", "w")}
        for order, pos in zip(orders, positives, strict=True):
            cands = set(order)
            cold = [p for p in pos if p not in sold_in_train]
            warm = [p for p in pos if p in sold_in_train]
            cols["ndcg"].append(ndcg_at(order, pos, 10))
            cols["recall"].append(recall_at(order, pos, 10))
            cols["mrr"].append(reciprocal_rank(order, pos))
            cols["cand"].append(len(pos & cands) / len(pos))
            cols["cr"].append(sum(p in cands for p in cold))
            cols["c"].append(len(cold))
            cols["wr"].append(sum(p in cands for p in warm))
            cols["w"].append(len(warm))
        f, i = np.float64, np.int64
        return cls(
            np.asarray(cols["ndcg"], f),
            np.asarray(cols["recall"], f),
            np.asarray(cols["mrr"], f),
            np.asarray(cols["cand"], f),
            np.asarray(cols["cr"], i),
            np.asarray(cols["c"], i),
            np.asarray(cols["wr"], i),
            np.asarray(cols["w"], i),
        )

    def per_basket(self, metric: str) -> np.ndarray:
        """The per-basket values a mean metric averages."""
        return {
            "ndcg@10": self.ndcg,
            "recall@10": self.recall,
            "mrr": self.mrr,
            "candidate_recall@50": self.candidate_recall,
        }[metric]

    def pooled(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(reached, all) per basket for a pooled metric."""
        if metric == "cold_reached":
            return self.cold_reached, self.cold
        return self.warm_reached, self.warm

    def value(self, metric: str, idx: np.ndarray | None = None) -> np.ndarray:
        """The metric over the baskets `idx` ([resamples, n] indices; None: all baskets, as a 0-d array)."""
        if metric in MEAN_METRICS:
            x = self.per_basket(metric)
            return x.mean() if idx is None else x[idx].mean(axis=1)
        hit, total = self.pooled(metric)
        h, t = (hit.sum(), total.sum()) if idx is None else (hit[idx].sum(axis=1), total[idx].sum(axis=1))
        return np.divide(h, t, out=np.full(np.shape(h), np.nan), where=np.asarray(t) > 0)


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def _number(x: float | np.ndarray) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


@dataclass(frozen=True)
class OrderResult:
    metrics: dict[str, float | None]
    ci95: dict[str, tuple[float, float] | None]


@dataclass(frozen=True)
class Ratio:
    ratio: float | None  # None where the second order's mean is 0
    ci95: tuple[float, float] | None


def summarise(scores: BasketScores, idx: np.ndarray) -> OrderResult:
    """Every metric of one order with its bootstrap interval over the resamples `idx`."""
    metrics, ci = {}, {}
    for m in (*MEAN_METRICS, *POOLED_METRICS):
        metrics[m] = _number(scores.value(m))
        ci[m] = _interval(scores.value(m, idx))
    return OrderResult(metrics, ci)


def paired(
    a: BasketScores, b: BasketScores, idx: np.ndarray, metrics: Sequence[str] = PAIRED_METRICS
) -> dict[str, Ratio]:
    """mean(a) / mean(b) per metric (a pooled one: reached / all pooled, as its order's figure), with its
    interval from the same resamples for both."""
    out = {}
    for m in metrics:
        num, den = a.value(m), b.value(m)
        ratio = _number(num / den) if den else None
        ra, rb = a.value(m, idx), b.value(m, idx)
        ratios = np.divide(ra, rb, out=np.full(len(ra), np.nan), where=rb > 0)
        out[m] = Ratio(ratio, _interval(ratios))
    return out


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] basket indices drawn with replacement; one draw shared by every order."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((0, 0), np.int64)


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)


@dataclass(frozen=True)
class ModelNote:
    """Which model ranked `model-live` and what it was fed."""

    version: str
    path: str
    signal_set: str | None  # the set the model was trained on
    fed: str | None  # the set computed here (SIGNALS.version) when it reads signals
    rerank_top: int  # candidates cross-encoded per basket (0: all)


@dataclass(frozen=True)
class OpenBaskets:
    """The orders on open states of the split's baskets (see the module doc)."""

    states: int
    per_basket: int  # open states drawn per basket (at most)
    orders: dict[str, OrderResult]
    paired: dict[str, dict[str, Ratio]]


def _results(orders: Mapping[str, OrderResult]) -> dict[str, object]:
    return {
        name: {**r.metrics, "ci95": {m: None if v is None else list(v) for m, v in r.ci95.items()}}
        for name, r in orders.items()
    }


def _ratios(paired: Mapping[str, Mapping[str, Ratio]]) -> dict[str, object]:
    return {
        pair: {m: {"ratio": r.ratio, "ci95": None if r.ci95 is None else list(r.ci95)} for m, r in ms.items()}
        for pair, ms in paired.items()
    }


@dataclass(frozen=True)
class EndToEnd:
    """The end-to-end figures of one split (see the module doc for the definitions)."""

    split: str
    split_baskets: int  # every basket of the split
    baskets: int  # the eligible ones, all measured
    positives: int
    cold_positives: int
    orders: dict[str, OrderResult]
    paired: dict[str, dict[str, Ratio]]
    model: ModelNote | None
    resamples: int
    seconds: dict[str, float] = field(default_factory=dict)
    text: TextNote | None = None
    open_baskets: OpenBaskets | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "split": self.split,
            "split_baskets": self.split_baskets,
            "baskets": self.baskets,
            "positives": self.positives,
            "cold_positives": self.cold_positives,
        }
        out.update(_results(self.orders))
        out["paired"] = _ratios(self.paired)
        out["model"] = None if self.model is None else asdict(self.model)
        if self.text is not None:
            out["text"] = asdict(self.text)
        if NO_TEXT in self.orders:
            out["text_ablation"] = {
                name: {"ndcg@10": self.orders[o].metrics["ndcg@10"], "ci95": _listed(self.orders[o].ci95["ndcg@10"])}
                for name, o in (("with_text", MODEL), ("without_text", NO_TEXT))
            }
        if MODEL_MERGED_NO_TEXT in self.orders:
            out["text_ablation_merged"] = {
                name: {"ndcg@10": self.orders[o].metrics["ndcg@10"], "ci95": _listed(self.orders[o].ci95["ndcg@10"])}
                for name, o in (("with_text", MODEL_MERGED), ("without_text", MODEL_MERGED_NO_TEXT))
            }
        if self.open_baskets is not None:
            ob = self.open_baskets
            out["open_baskets"] = {
                "states": ob.states,
                "per_basket": ob.per_basket,
                **_results(ob.orders),
                "paired": _ratios(ob.paired),
            }
        out["bootstrap"] = {"resamples": self.resamples, "seed": SEED}
        out["seconds"] = self.seconds
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        """A small table a person can read."""

        def cell(r: OrderResult, m: str) -> str:
            v, ci = r.metrics[m], r.ci95[m]
            if v is None:
                return "-"
            return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

        def table(orders: Mapping[str, OrderResult], paired: Mapping[str, Mapping[str, Ratio]]) -> list[str]:
            head = f"{'order':<19} {'NDCG@10 [95% CI]':<26} {'Recall@10':>9} {'cand.recall@50 [95% CI]':<26} "
            rows = [head + f"{'cold':>6} {'warm':>6}"]
            for name, r in orders.items():
                cold, warm = (r.metrics[m] for m in POOLED_METRICS)
                rows.append(
                    f"{name:<19} {cell(r, 'ndcg@10'):<26} {r.metrics['recall@10'] or 0:>9.4f} "
                    f"{cell(r, 'candidate_recall@50'):<26} {cold or 0:>6.3f} {warm or 0:>6.3f}"
                )
            for pair, ms in paired.items():
                parts = [
                    f"{m} x{r.ratio:.3f}" + (f" [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]" if r.ci95 else "")
                    for m, r in ms.items()
                    if r.ratio is not None
                ]
                rows.append(f"{pair.replace('_vs_', ' / ')}: " + ", ".join(parts))
            return rows

        rows = table(self.orders, self.paired)
        rows.append(
            f"{self.baskets:,} of {self.split_baskets:,} {self.split} baskets eligible (a history and a new item), "
            f"all measured; {self.positives:,} positives, {self.cold_positives:,} never sold in train"
        )
        if self.model is not None:
            m = self.model
            fed = "" if m.signal_set in (None, m.fed) else f" (trained on signal set {m.signal_set}, fed {m.fed})"
            rows.append(f"model-live: {m.version}{fed}, top {m.rerank_top} cross-encoded")
        else:
            rows.append("model-live: no model given or installed")
        if self.text is not None:
            rows.append(f"text orders: {self.text.encoder}, {self.text.items:,} item vectors of {self.text.dim}")
        if self.open_baskets is not None:
            ob = self.open_baskets
            rows.append(
                f"\nopen baskets: {ob.states:,} states (up to {ob.per_basket} a basket), the rest of the basket to come"
            )
            rows.extend(table(ob.orders, ob.paired))
        return "\n".join(rows)


def model_orders(
    ranker: ListScorer,
    live: LiveInstances,
    catalog: Mapping[str, str],
    rerank_top: int,
) -> list[list[str]]:
    """Each basket's live candidates as the model orders them (ties: the candidate order, as `top_k`)."""
    cands = [in_catalog(inst.candidates, catalog) for inst in live.instances]
    return ranked_lists(ranker, [i.history for i in live.instances], cands, live.signals, catalog, rerank_top)


def ranked_lists(
    ranker: ListScorer,
    histories: Sequence[Sequence[str]],
    cands: Sequence[Sequence[str]],
    signals: Sequence[np.ndarray] | None,
    catalog: Mapping[str, str],
    rerank_top: int,
) -> list[list[str]]:
    """Each user's candidates (with their signal rows) as the model orders them, as the scorer calls it."""
    lists = []
    for history, cs in zip(histories, cands, strict=True):
        query = history_text([catalog[i] for i in history if i in catalog])
        lists.append([(query, candidate_text(catalog[c], r)) for r, c in enumerate(cs)])
    fed = signals if ranker.signals is not None else None
    scores = ranker.score_lists(lists, fed, top=rerank_top)
    return [[c for c, _ in top_k(cs, s.tolist(), len(cs))] for cs, s in zip(cands, scores, strict=True)]


def linear_orders(linear: LinearPart, live: LiveInstances, catalog: Mapping[str, str]) -> list[list[str]]:
    """Each basket's live candidates as a model's linear part alone orders them (ties: candidate order)."""
    cands = [in_catalog(inst.candidates, catalog) for inst in live.instances]
    return linear_ranked(linear, cands, live.signals)


def linear_ranked(
    linear: LinearPart, cands: Sequence[Sequence[str]], signals: Sequence[np.ndarray] | None
) -> list[list[str]]:
    """Each list of candidates (with its signal rows) as a linear part alone orders it (ties: list order)."""
    out = []
    for k, cs in enumerate(cands):
        rows = None if linear.signal_weight is None or signals is None else signals[k]
        out.append([c for c, _ in top_k(cs, linear.scores(len(cs), rows).tolist(), len(cs))])
    return out


def _orders(
    prepared: Prepared,
    live: LiveInstances,
    ranker: ListScorer | None,
    rerank_top: int,
    held: LiveInstances | None = None,
) -> dict[str, list[list[str]]]:
    """The frozen and live co-visitation orders of `live`'s instances, the model's with and without its text,
    and with `held` (the same instances read from the held tables) the model's order of those."""
    catalog = prepared.catalog
    insts = live.instances
    orders = {
        FROZEN: [
            in_catalog(covisit_candidates(i.history, prepared.neighbours, prepared.trending, N_CANDIDATES), catalog)
            for i in insts
        ],
        LIVE: [in_catalog(i.candidates, catalog) for i in insts],
    }
    if ranker is not None:
        orders[MODEL] = model_orders(ranker, live, catalog, rerank_top)
        if getattr(ranker, "linear", None) is not None:
            orders[NO_TEXT] = linear_orders(ranker.linear, live, catalog)  # type: ignore[attr-defined]
        if held is not None:
            if [(i.history, i.positives) for i in held.instances] != [(i.history, i.positives) for i in insts]:
                raise RuntimeError("the held tables' walk found other baskets than the live one")
            orders[MODEL_FROZEN] = model_orders(ranker, held, catalog, rerank_top)
    return orders


def measure(
    prepared: Prepared,
    split: str = "test",
    *,
    ranker: ListScorer | None = None,
    rerank_top: int = 0,
    model_path: Path | None = None,
    resamples: int = RESAMPLES,
    partitions: int = PARTITIONS,
    vectors: ItemVectors | None = None,
    encoder: str = "",
    names: OrderNames = PRETRAINED,
    open_baskets: int = 0,
    params: LiveParams | None = None,
    merge: MergeHead | None = None,
    model_frozen: bool = False,
) -> EndToEnd:
    """Every order on every eligible basket of `split` (see the module doc); the text orders too, under
    `names`, when `vectors` (made by `encoder`) are given; and with `open_baskets`, the orders (all but the
    text retrieval ones) on that many open states of each basket. `params`: the live tables' settings
    (default: the scorer's). With `merge` (fitted on `vectors`), the learned merge's orders too. With
    `model_frozen` and a ranker, `model-frozen` too: a second walk whose tables stop at the train split."""
    t0 = time.perf_counter()
    catalog = prepared.catalog
    with_signals = ranker is not None and ranker.signals is not None

    def walk(until_ms: int | None = None) -> LiveInstances:
        return live_instances(
            prepared.interactions,
            prepared.frame(split),
            catalog,
            n_candidates=N_CANDIDATES,
            with_signals=with_signals,
            partitions=partitions,
            open_baskets=open_baskets,
            params=params,
            tables_until_ms=until_ms,
        )

    walked = walk()
    live = walked.only(opened=False)
    seconds = {"replay": round(time.perf_counter() - t0, 1)}
    held = None
    if model_frozen and ranker is not None:
        t5 = time.perf_counter()
        held = walk(int(prepared.split.train_end.timestamp() * 1000))
        seconds["replay_held"] = round(time.perf_counter() - t5, 1)
    insts = live.instances
    positives = [inst.positives for inst in insts]
    sold = set(prepared.frame("train")["item_id"])
    t1 = time.perf_counter()
    orders = _orders(prepared, live, ranker, rerank_top, None if held is None else held.only(opened=False))
    note = None
    if ranker is not None:
        seconds["model"] = round(time.perf_counter() - t1, 1)
        fed = SIGNALS.version if ranker.signals is not None else None
        note = ModelNote(ranker.version, str(model_path or ""), ranker.signals, fed, rerank_top)
    text_note = None
    if vectors is not None:
        t2 = time.perf_counter()
        orders.update(text_orders(vectors, [i.history for i in insts], orders[LIVE], catalog, N_CANDIDATES, names))
        seconds["text"] = round(time.perf_counter() - t2, 1)
        text_note = TextNote(encoder, len(vectors.ids), int(vectors.matrix.shape[1]))
    if merge is not None:
        t4 = time.perf_counter()
        orders.update(_merge_orders(prepared, split, merge, vectors, insts, ranker, rerank_top, params, partitions))
        seconds["merge"] = round(time.perf_counter() - t4, 1)
    scores = {name: BasketScores.of(o, positives, sold) for name, o in orders.items()}
    idx = resample_indices(len(insts), resamples)
    pairs = {f"{a}_vs_{b}": paired(scores[a], scores[b], idx) for a, b in PAIRS if a in scores and b in scores}
    for a, b in TEXT_PAIRS:
        if a in scores and b in scores:
            pairs[f"{a}_vs_{b}"] = paired(scores[a], scores[b], idx, TEXT_PAIRED_METRICS)
    opened = None
    if open_baskets:
        t3 = time.perf_counter()
        states = walked.only(opened=True)
        o_scores = {
            name: BasketScores.of(o, [i.positives for i in states.instances], sold)
            for name, o in _orders(
                prepared, states, ranker, rerank_top, None if held is None else held.only(opened=True)
            ).items()
        }
        o_idx = resample_indices(len(states.instances), resamples)
        opened = OpenBaskets(
            len(states.instances),
            open_baskets,
            {name: summarise(sc, o_idx) for name, sc in o_scores.items()},
            {
                f"{a}_vs_{b}": paired(o_scores[a], o_scores[b], o_idx)
                for a, b in PAIRS
                if a in o_scores and b in o_scores
            },
        )
        seconds["open_baskets"] = round(time.perf_counter() - t3, 1)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    n_pos = sum(len(p) for p in positives)
    n_cold = sum(sum(x not in sold for x in p) for p in positives)
    return EndToEnd(
        split,
        live.baskets,
        len(insts),
        n_pos,
        n_cold,
        {name: summarise(s, idx) for name, s in scores.items()},
        pairs,
        note,
        resamples,
        seconds,
        text_note,
        opened,
    )


def _merge_orders(
    prepared: Prepared,
    split: str,
    merge: MergeHead,
    vectors: ItemVectors | None,
    insts: Sequence[Instance],
    ranker: ListScorer | None,
    rerank_top: int,
    params: LiveParams | None,
    partitions: int,
) -> dict[str, list[list[str]]]:
    """The learned merge's candidates in its own order, and the model's order of them, per basket."""
    if merge.pool_text and vectors is None:
        raise ConfigError(f"the merge {merge.version} pools {merge.pool_text} text neighbours: give item vectors")
    pooled = pooled_baskets(
        prepared.interactions,
        prepared.frame(split),
        prepared.catalog,
        vectors,
        merge.pool_covisit,
        merge.pool_text,
        params=params,
        partitions=partitions,
    )
    if [(b.history, b.positives) for b in pooled] != [(tuple(i.history), i.positives) for i in insts]:
        raise RuntimeError("the merge's walk found other baskets than the live one")  # one definition of both
    merged = merged_orders(merge, pooled, N_CANDIDATES)
    out = {MERGED_LEARNED: [items for items, _ in merged]}
    if ranker is not None:
        out[MODEL_MERGED] = ranked_lists(
            ranker,
            [b.history for b in pooled],
            out[MERGED_LEARNED],
            [rows for _, rows in merged],
            prepared.catalog,
            rerank_top,
        )
        linear = getattr(ranker, "linear", None)
        if linear is not None:
            out[MODEL_MERGED_NO_TEXT] = linear_ranked(linear, out[MERGED_LEARNED], [rows for _, rows in merged])
    return out


def installed_model(models: Path) -> Path | None:
    """The artifact `rankstream eval` picks in a models folder (the newest version), or None when it holds none."""
    try:
        return resolve_model_dir(models)
    except ConfigError:
        log.warning("no model artifact in %s: end-to-end without model-live", models)
        return None


def load_model(model_dir: Path, settings: Settings, *, accept_signals: str | None = None) -> tuple[Ranker, int]:
    """The model as the scorer would load it, and the candidates it would cross-encode (`rerank_top_for`).

    Raises:
        ConfigError: the model was trained on another signal set and `accept_signals` does not name it.
    """
    trained_on = load_manifest(model_dir).input_spec.signals
    if trained_on not in (None, SIGNALS.version, accept_signals):
        raise ConfigError(
            f"{model_dir}: trained on signal set {trained_on!r}, this code computes {SIGNALS.version!r} (the live "
            f"tables at each basket); pass --accept-signal-set {trained_on} to measure it on the current signals "
            "anyway, or --model a model trained on them"
        )
    ranker = Ranker.load(
        model_dir, threads=settings.threads, batch_size=settings.score_batch_size, accept_signals=accept_signals
    )
    return ranker, rerank_top_for(settings, ranker)


def run_end_to_end(
    data_dir: Path,
    split: str,
    model_dir: Path | None,
    settings: Settings,
    *,
    accept_signals: str | None = None,
    embed: Callable[[Mapping[str, str]], ItemVectors] | None = None,
    encoder: str = "",
    names: OrderNames = PRETRAINED,
    open_baskets: int = 0,
    merge: MergeHead | None = None,
    model_frozen: bool = False,
) -> EndToEnd:
    """`measure` on prepared data, with `model_dir` (None: no model-live row) loaded as the scorer loads it,
    and the text orders, under `names`, when `embed` (the catalog's titles -> their vectors, made by
    `encoder`) is given."""
    prepared = Prepared.load(data_dir)
    t0 = time.perf_counter()
    vectors = None if embed is None else embed(prepared.catalog)
    embed_s = round(time.perf_counter() - t0, 1)
    ranker, top = (None, 0) if model_dir is None else load_model(model_dir, settings, accept_signals=accept_signals)
    result = measure(
        prepared,
        split,
        ranker=ranker,
        rerank_top=top,
        model_path=model_dir,
        vectors=vectors,
        encoder=encoder,
        names=names,
        open_baskets=open_baskets,
        merge=merge,
        model_frozen=model_frozen,
    )
    return result if vectors is None else replace(result, seconds={"embed": embed_s, **result.seconds})
