"""`rankstream eval --end-to-end` on a hand-made shop whose every figure is worked out below by hand."""

import json
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from rankstream.data.prepare import Prepared, prepare
from rankstream.data.split import Split
from rankstream.evaluation.endtoend import BasketScores, measure, resample_indices
from rankstream.evaluation.merge import PooledBasket, fit_head
from rankstream.evaluation.text import ItemVectors
from rankstream.stream.errors import ConfigError
from rankstream.stream.live import partition_of
from rankstream.stream.retrieval import FEATURES, MergeHead, merge_features, pool
from rankstream.stream.signals import SIGNALS

# Users all on partition 0 of 4, so the live tables are one share and its trending is worked out below.
U1, U2, U3, U4, U5 = "u1", "u9", "u10", "u12", "u13"
ROWS = [
    # train (before Jan 10)
    (U1, "a", "2024-01-01"),
    (U1, "b", "2024-01-01"),
    (U2, "a", "2024-01-02"),
    (U2, "b", "2024-01-02"),
    (U3, "c", "2024-01-03"),
    (U3, "d", "2024-01-03"),
    # valid: e is first sold here
    (U4, "a", "2024-01-12"),
    (U4, "e", "2024-01-12"),
    # test (from Jan 20): 4 baskets, 2 eligible
    (U1, "c", "2024-01-21"),  # history (b, a); positives c (warm), e (cold: never sold in train)
    (U1, "e", "2024-01-21"),
    (U3, "d", "2024-01-22"),  # history (d, c); positive f only (cold, never sold at all)
    (U3, "f", "2024-01-22"),
    (U5, "a", "2024-01-22T11:00:00"),  # no history: not eligible
    (U4, "e", "2024-01-23"),  # nothing new: not eligible
]
IDEAL2 = 1 + 1 / math.log2(3)  # DCG of two hits at the top


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    src = tmp_path_factory.mktemp("shop") / "src"
    src.mkdir()
    stamp = [t if "T" in t else f"{t}T10:00:00" for _, _, t in ROWS]
    lines = [f"{u},{i},{t}Z,purchase" for (u, i, _), t in zip(ROWS, stamp, strict=True)]
    (src / "interactions.csv").write_text("user_id,item_id,ts,event\n" + "\n".join(lines) + "\n")
    (src / "catalog.csv").write_text("item_id,title\n" + "".join(f"{i},{i} thing\n" for i in "abcdefg"))
    return prepare(src, src.parent / "data", Split("2024-01-10", "2024-01-20"))


class Reverser:
    """A stand-in model that ranks each list backwards, recording what it was given."""

    version = "reverser"

    def __init__(self, signals: str | None = None) -> None:
        self.signals = signals
        self.calls: list[tuple[Sequence[object], Sequence[np.ndarray] | None, int]] = []

    def score_lists(
        self, lists: Sequence[Sequence[tuple[str, str]]], signals: Sequence[np.ndarray] | None = None, *, top: int = 0
    ) -> list[np.ndarray]:
        self.calls.append((lists, signals, top))
        return [np.arange(len(pairs), dtype=np.float32) for pairs in lists]


def test_users_share_one_partition() -> None:
    assert {partition_of(u, 4) for u in (U1, U2, U3, U4, U5)} == {0}


def test_every_figure_by_hand(shop: Prepared) -> None:
    model = Reverser()
    result = measure(shop, "test", ranker=model, rerank_top=10)
    assert (result.split_baskets, result.baskets, result.positives, result.cold_positives) == (4, 2, 3, 2)

    # Frozen (train only): neighbours a<->b, c<->d; trending a, b, c, d. Neither history votes for anything
    # new, so the lists are trending minus history: u1 [c, d] (hits c at 1), u10 [a, b] (no hit).
    frozen = result.orders["covisit-frozen"].metrics
    assert frozen["ndcg@10"] == pytest.approx((1 / IDEAL2 + 0) / 2)
    assert frozen["recall@10"] == pytest.approx(0.25) and frozen["mrr"] == pytest.approx(0.5)
    assert frozen["candidate_recall@50"] == pytest.approx(0.25)
    assert frozen["cold_reached"] == 0.0 and frozen["warm_reached"] == 1.0

    # Live before u1's basket (Jan 21): a's neighbours are b (Jan 1 + Jan 2) then e (Jan 12: 2^(11/30) <
    # 2^0 + 2^(1/30)), so a votes for e; trending (rolled on Jan 12's first event) a, b, c, d -> [e, c, d],
    # both positives on top. Before u10's (Jan 22): u1's basket made c's neighbours e (Jan 21) then d, so
    # [e] + trending (rolled Jan 21: a, b, c, d, e) minus history -> [e, a, b]: f is nowhere.
    live = result.orders["covisit-live"].metrics
    assert live["ndcg@10"] == pytest.approx(0.5) and live["recall@10"] == pytest.approx(0.5)
    assert live["mrr"] == pytest.approx(0.5) and live["candidate_recall@50"] == pytest.approx(0.5)
    assert live["cold_reached"] == pytest.approx(0.5) and live["warm_reached"] == 1.0  # e reached, f not

    # The model reverses the live lists: u1 [d, c, e] (hits at 2 and 3), u10 [b, a, e].
    ((lists, signals, top),) = model.calls
    assert [[p[1] for p in lst] for lst in lists] == [
        ["1 | e thing", "2 | c thing", "3 | d thing"],
        ["1 | e thing", "2 | a thing", "3 | b thing"],
    ]
    assert signals is None and top == 10  # a text-only model is given no signals
    ranked = result.orders["model-live"].metrics
    assert ranked["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / IDEAL2 / 2)
    assert ranked["recall@10"] == pytest.approx(0.5) and ranked["mrr"] == pytest.approx(0.25)
    assert ranked["candidate_recall@50"] == pytest.approx(0.5)

    ratios = result.paired["covisit-live_vs_covisit-frozen"]
    assert ratios["candidate_recall@50"].ratio == pytest.approx(2.0)
    assert ratios["ndcg@10"].ratio == pytest.approx(IDEAL2)
    # Resampling 2 baskets: where u1's is drawn, live/frozen candidate recall is 2 (1 vs 0.5, or 0.5 vs 0.25);
    # where only u10's is, both are 0 and the ratio is left out.
    assert ratios["candidate_recall@50"].ci95 == pytest.approx((2.0, 2.0))
    assert result.paired["model-live_vs_covisit-live"]["candidate_recall@50"].ratio == pytest.approx(1.0)
    # Means over {u1, u10} drawn twice: 0, 1/2 or 1 for live candidate recall, so the 95% band is [0, 1].
    assert result.orders["covisit-live"].ci95["candidate_recall@50"] == pytest.approx((0.0, 1.0))
    assert result.orders["covisit-frozen"].ci95["ndcg@10"] == pytest.approx((0.0, 1 / IDEAL2))


def test_open_baskets_by_hand_leave_the_basket_figures_as_they_were(shop: Prepared) -> None:
    plain = measure(shop, "test", ranker=Reverser(), rerank_top=10)
    result = measure(shop, "test", ranker=Reverser(), rerank_top=10, open_baskets=3)
    assert result.orders == plain.orders and result.paired == plain.paired and plain.open_baskets is None
    ob = result.open_baskets
    assert ob is not None and (ob.states, ob.per_basket) == (2, 3)  # u1's and u10's two-line baskets, k = 1
    # u1 after c: history (c, b, a), e to come. Live: c votes d (1/1), a votes e (1/(3*2)) -> [d, e], e at 2.
    # u10 after d: history (d, c), f to come: as for its basket, [e, a, b], f nowhere. Frozen: u1 [d], u10
    # [a, b]: no hit. The reverser puts e first for u1.
    assert ob.orders["covisit-live"].metrics["ndcg@10"] == pytest.approx(1 / math.log2(3) / 2)
    assert ob.orders["covisit-frozen"].metrics["ndcg@10"] == 0.0
    assert ob.orders["model-live"].metrics["ndcg@10"] == pytest.approx(0.5)
    assert ob.paired["model-live_vs_covisit-live"]["ndcg@10"].ratio == pytest.approx(math.log2(3))
    assert result.to_dict()["open_baskets"]["states"] == 2 and "open baskets: 2 states" in result.format()


def test_the_live_tables_settings_reach_the_walk(shop: Prepared) -> None:
    from rankstream.stream.live import LiveParams

    # One neighbour kept per item: before Jan 21 a's heaviest is b (Jan 1 + Jan 2 outweigh e's Jan 12 at a
    # 30-day half-life), so u1 (history b, a) gets no vote for e and sees trending minus history [c, d].
    narrow = measure(shop, "test", params=LiveParams(neighbours=1))
    assert narrow.orders["covisit-live"].metrics["candidate_recall@50"] == pytest.approx(0.25)
    assert measure(shop, "test").orders["covisit-live"].metrics["candidate_recall@50"] == pytest.approx(0.5)


def test_a_model_with_signals_gets_the_live_rows(shop: Prepared) -> None:
    from rankstream.data.live_instances import live_instances

    model = Reverser(SIGNALS.version)
    result = measure(shop, "test", ranker=model, rerank_top=0)
    ((_, signals, top),) = model.calls
    live = live_instances(shop.interactions, shop.frame("test"), shop.catalog)
    assert signals is not None and live.signals is not None and top == 0
    for got, want in zip(signals, live.signals, strict=True):
        np.testing.assert_array_equal(got, want)
    assert result.model is not None and result.model.fed == SIGNALS.version == result.model.signal_set


def _unit(rows: list[tuple[float, float, float]]) -> np.ndarray:
    m = np.asarray(rows, np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# e sits next to a, f next to d, g next to c, b between a and d: u1 (history b, a) finds e first, u10
# (history d, c) finds f first.
SHOP_VECTORS = ItemVectors(
    tuple("abcdefg"), _unit([(1, 0, 0), (1, 1, 0), (0, 0, 1), (0, 1, 0), (1, 0.1, 0), (0, 1, 0.1), (0, 0.2, 1)])
)


def test_text_orders_by_hand_leave_the_other_orders_as_they_were(shop: Prepared) -> None:
    result = measure(shop, "test", ranker=Reverser(), rerank_top=10, vectors=SHOP_VECTORS, encoder="hand-made")
    plain = measure(shop, "test", ranker=Reverser(), rerank_top=10)
    for name in ("covisit-frozen", "covisit-live", "model-live"):
        assert result.orders[name] == plain.orders[name]
    assert {k: v for k, v in result.paired.items() if k in plain.paired} == plain.paired
    assert result.text is not None and (result.text.items, result.text.dim) == (7, 3)

    # text: u1 [e .995, d .707, f .704, g, c 0] (hits at 1 and 5), u10 [f .995, g .98, b .707, e, a] (hit at 1).
    text = result.orders["text-pretrained"].metrics
    assert text["ndcg@10"] == pytest.approx(((1 + 1 / math.log2(6)) / IDEAL2 + 1) / 2)
    assert text["candidate_recall@50"] == 1.0 and text["cold_reached"] == 1.0 and text["warm_reached"] == 1.0
    # merged: the live lists whole (shorter than the head), then text's new items: u1 [e, c, d, f, g] (hits at
    # 1 and 2), u10 [e, a, b, f, g] (hit at 4).
    merged = result.orders["merged-pretrained"].metrics
    assert merged["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 2)
    assert merged["candidate_recall@50"] == 1.0 and merged["cold_reached"] == 1.0
    # covisit-live by similarity: u1 [e, d, c] (hits at 1 and 3), u10 [b, e, a] (none).
    cosine = result.orders["covisit-live-cosine"].metrics
    assert cosine["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / IDEAL2 / 2)
    assert cosine["candidate_recall@50"] == pytest.approx(0.5)

    ratios = result.paired["merged-pretrained_vs_covisit-live"]
    assert set(ratios) == {"ndcg@10", "recall@10", "candidate_recall@50", "cold_reached"}
    assert ratios["candidate_recall@50"].ratio == pytest.approx(2.0)
    assert ratios["cold_reached"].ratio == pytest.approx(2.0)  # e and f against e alone
    assert result.paired["covisit-live-cosine_vs_covisit-live"]["candidate_recall@50"].ratio == pytest.approx(1.0)
    assert "text orders: hand-made" in result.format()
    assert result.to_dict()["text"] == {"encoder": "hand-made", "items": 7, "dim": 3}


def test_basket_scores_count_missed_positives_as_misses() -> None:
    scores = BasketScores.of([["x", "p"], []], [frozenset({"p", "q"}), frozenset({"r"})], sold_in_train={"p"})
    assert scores.ndcg.tolist() == pytest.approx([(1 / math.log2(3)) / IDEAL2, 0.0])
    assert scores.recall.tolist() == [0.5, 0.0] and scores.candidate_recall.tolist() == [0.5, 0.0]
    assert scores.mrr.tolist() == [0.5, 0.0]
    assert (scores.cold_reached.tolist(), scores.cold.tolist()) == ([0, 0], [1, 1])  # q and r, not reached
    assert (scores.warm_reached.tolist(), scores.warm.tolist()) == ([1, 0], [1, 0])
    assert float(scores.value("cold_reached")) == 0.0 and float(scores.value("warm_reached")) == 1.0
    idx = resample_indices(2, 5, seed=3)
    assert idx.shape == (5, 2) and (resample_indices(2, 5, seed=3) == idx).all()


def test_cli_json_has_every_order_metric_interval_and_ratio(
    shop: Prepared, signal_fp32_artifact: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rankstream.cli.main import main

    for k in [k for k in os.environ if k.startswith("RANKSTREAM_")]:
        monkeypatch.delenv(k)
    argv = ["eval", "--end-to-end", "--json", "--data", str(shop.out_dir), "--model", str(signal_fp32_artifact)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baskets"] == 2 and out["split_baskets"] == 4
    metrics = {"ndcg@10", "recall@10", "mrr", "candidate_recall@50", "cold_reached", "warm_reached"}
    for order in ("covisit-frozen", "covisit-live", "model-live", "model-live-no-text"):
        assert set(out[order]) == metrics | {"ci95"} and set(out[order]["ci95"]) == metrics
        assert all(len(v) == 2 for v in out[order]["ci95"].values() if v is not None)
    assert set(out["paired"]) == {
        "covisit-live_vs_covisit-frozen",
        "model-live_vs_covisit-live",
        "model-live_vs_covisit-frozen",
        "model-live_vs_model-live-no-text",
    }
    # The text ablation: the model, and its linear part alone on the same candidates and signals.
    ablation = out["text_ablation"]
    assert ablation["with_text"]["ndcg@10"] == out["model-live"]["ndcg@10"]
    assert ablation["without_text"]["ndcg@10"] == out["model-live-no-text"]["ndcg@10"]
    assert ablation["without_text"]["ci95"] == out["model-live-no-text"]["ci95"]["ndcg@10"]
    for ratios in out["paired"].values():
        assert set(ratios) == {"ndcg@10", "recall@10", "candidate_recall@50"}
        assert all(set(r) == {"ratio", "ci95"} for r in ratios.values())
    assert out["model"]["signal_set"] == SIGNALS.version and out["model"]["rerank_top"] in (0, 10)

    # --text adds the three text orders, from vectors of the catalog made in the CLI (stood in for here).
    monkeypatch.setattr(
        "rankstream.compression.embed.item_vectors", lambda catalog: (SHOP_VECTORS.matrix, list(SHOP_VECTORS.ids))
    )
    assert main([*argv, "--text"]) == 0
    with_text = json.loads(capsys.readouterr().out)
    for order in ("text-pretrained", "merged-pretrained", "covisit-live-cosine"):
        assert set(with_text[order]) == metrics | {"ci95"}
        assert set(with_text["paired"][f"{order}_vs_covisit-live"]) == {
            "ndcg@10",
            "recall@10",
            "candidate_recall@50",
            "cold_reached",
        }
    assert with_text["covisit-live"] == out["covisit-live"] and "embed" in with_text["seconds"]

    # Without a model anywhere, the model-live row is left out and the table says so.
    monkeypatch.setenv("RANKSTREAM_HOME", str(shop.out_dir.parent / "empty-home"))
    assert main(["eval", "--end-to-end", "--data", str(shop.out_dir)]) == 0
    table = capsys.readouterr().out
    assert "covisit-live" in table and "model-live: no model given or installed" in table


def test_the_no_text_order_is_the_linear_part_alone(shop: Prepared, signal_fp32_artifact: Path) -> None:
    from rankstream.data.live_instances import live_instances
    from rankstream.evaluation.endtoend import linear_orders
    from rankstream.stream.ranker import Ranker

    ranker = Ranker.load(signal_fp32_artifact)
    assert ranker.linear is not None
    live = live_instances(shop.interactions, shop.frame("test"), shop.catalog, n_candidates=50, with_signals=True)
    orders = linear_orders(ranker.linear, live, shop.catalog)
    for inst, sig, order in zip(live.instances, live.signals, orders, strict=True):
        cands = [c for c in inst.candidates if c in shop.catalog]
        assert sorted(order) == sorted(cands)
        scores = dict(zip(cands, ranker.linear.scores(len(cands), sig), strict=True))
        assert [scores[c] for c in order] == sorted(scores.values(), reverse=True)


def _merge_head(weights: dict[str, float], pool_text: int = 5) -> MergeHead:
    w = np.array([weights.get(name, 0.0) for name in FEATURES])
    n = len(FEATURES)
    return MergeHead("m-hand", SIGNALS.version, "hand-made", 50, pool_text, np.zeros(n), np.ones(n), w, 0.0)


def test_a_merge_that_keeps_the_covisitation_order_scores_as_it(shop: Prepared) -> None:
    """A head weighing only the co-visitation place (its rank first, then text-only items last) picks the
    live list, in its order: every figure of `merged-learned` is `covisit-live`'s, and the model is given
    those candidates with the rows `live_instances` computes for them."""
    model = Reverser(SIGNALS.version)
    head = _merge_head({"covisit_rank_log": -1.0, "from_covisit": 100.0}, pool_text=0)
    result = measure(shop, "test", ranker=model, rerank_top=0, vectors=SHOP_VECTORS, merge=head)
    assert result.orders["merged-learned"] == result.orders["covisit-live"]
    assert result.orders["model-merged"] == result.orders["model-live"]
    (_, live_rows, _), (_, merged_rows, _) = model.calls
    assert live_rows is not None and merged_rows is not None
    for a, b in zip(live_rows, merged_rows, strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.paired["merged-learned_vs_covisit-live"]["candidate_recall@50"].ratio == pytest.approx(1.0)


def test_a_merge_by_title_reaches_the_items_covisitation_cannot(shop: Prepared) -> None:
    """A head weighing the text cosine alone over a pool of both sources: u1's list starts with e (its
    nearest title, never sold in train), u10's with f (never sold at all), and every positive is reached."""
    head = _merge_head({"cosine": 1.0})
    result = measure(shop, "test", ranker=Reverser(SIGNALS.version), rerank_top=0, vectors=SHOP_VECTORS, merge=head)
    merged = result.orders["merged-learned"].metrics
    assert merged["candidate_recall@50"] == 1.0 and merged["cold_reached"] == 1.0
    assert merged["ndcg@10"] > result.orders["covisit-live"].metrics["ndcg@10"]
    ratio = result.paired["merged-learned_vs_covisit-live"]["candidate_recall@50"].ratio
    assert ratio == pytest.approx(2.0)  # covisit-live reaches c of u1's (c, e) and none of u10's (f)
    with pytest.raises(ConfigError, match="pools 5 text neighbours"):
        measure(shop, "test", merge=head)


def test_a_fitted_head_learns_what_marks_a_positive() -> None:
    rng = np.random.default_rng(0)
    baskets = []
    for k in range(200):
        items = [f"i{k}-{j}" for j in range(20)]
        signals = rng.normal(size=(20, len(SIGNALS.names))).astype(np.float32)
        p = pool(items, [])
        positives = frozenset(i for i, s in zip(items, signals[:, 5], strict=True) if s > 1.0) or frozenset(items[:1])
        at = datetime(2024, 1, 1, tzinfo=UTC)
        baskets.append(PooledBasket(at, (), positives, p, signals, merge_features(p, signals, {})))
    head = fit_head(baskets, version="m", signal_set=SIGNALS.version, encoder="", pool_covisit=20, pool_text=0)
    assert int(np.argmax(head.weight)) == 5  # pop7_log decides here, and the head found it
    assert head.weight[FEATURES.index("cosine")] == 0.0  # a constant feature gets no weight
    with pytest.raises(ValueError, match="cannot fit"):
        fit_head(baskets[:0], version="m", signal_set="s", encoder="", pool_covisit=1, pool_text=0)


def test_the_merged_ablation_is_the_linear_part_on_the_merges_candidates(
    shop: Prepared, signal_fp32_artifact: Path
) -> None:
    from rankstream.stream.ranker import Ranker

    ranker = Ranker.load(signal_fp32_artifact)
    head = _merge_head({"covisit_rank_log": -1.0, "from_covisit": 100.0}, pool_text=0)
    result = measure(shop, "test", ranker=ranker, rerank_top=0, vectors=SHOP_VECTORS, merge=head)
    # This head picks the live candidates in their order, so its ablation is the live one.
    assert result.orders["model-merged-no-text"] == result.orders["model-live-no-text"]
    ablation = result.to_dict()["text_ablation_merged"]
    assert set(ablation) == {"with_text", "without_text"}
    assert ablation["without_text"]["ndcg@10"] == result.orders["model-live-no-text"].metrics["ndcg@10"]


def test_model_frozen_is_the_model_on_the_train_splits_tables_held(shop: Prepared) -> None:
    model = Reverser()
    plain = measure(shop, "test", ranker=Reverser(), rerank_top=10, open_baskets=3)
    result = measure(shop, "test", ranker=model, rerank_top=10, open_baskets=3, model_frozen=True)
    assert {k: v for k, v in result.orders.items() if k != "model-frozen"} == plain.orders
    # Held at Jan 10, the tables know only Jan 1-3: a<->b, c<->d, and a, b trending (two buyers each). Each
    # history votes only for itself, so u1 (b, a) gets trending minus history, nothing, and u10 (d, c) a, b.
    lists_by_call = [[[p[1] for p in lst] for lst in lists] for lists, _, _ in model.calls]
    assert lists_by_call[1] == [[], ["1 | a thing", "2 | b thing"]]
    frozen = result.orders["model-frozen"].metrics
    assert frozen["ndcg@10"] == 0.0 and frozen["candidate_recall@50"] == 0.0  # c, e, f: none held-reachable
    assert result.paired["model-live_vs_model-frozen"]["ndcg@10"].ratio is None  # 0 below the line
    ob = result.open_baskets
    assert ob is not None and ob.orders["model-frozen"].metrics["ndcg@10"] == 0.0
    assert "model-live_vs_model-frozen" in ob.paired


def test_tables_held_after_the_split_are_the_live_tables(shop: Prepared) -> None:
    from rankstream.data.live_instances import live_instances

    live = live_instances(shop.interactions, shop.frame("test"), shop.catalog, open_baskets=3)
    late = live_instances(shop.interactions, shop.frame("test"), shop.catalog, open_baskets=3, tables_until_ms=2**62)
    assert late.instances == live.instances and late.opened == live.opened
    for a, b in zip(late.signals or [], live.signals or [], strict=True):
        np.testing.assert_array_equal(a, b)
