"""`compress --merge`: training lists and the gate's valid set hold the learned merge's candidates, with
the signal rows a scorer with that merge computes for them."""

from pathlib import Path

import numpy as np

from rankstream.data.live_instances import live_instances
from rankstream.data.prepare import Prepared
from rankstream.data.windows import training_windows
from rankstream.evaluation.evalset import EvalSet
from rankstream.evaluation.merge import merge_chooser, pooled_baskets
from rankstream.evaluation.text import ItemVectors
from rankstream.stream.retrieval import FEATURES, MergeHead
from rankstream.stream.signals import SIGNALS
from tests.model_builders import tiny_prepared


def _head(pool_text: int) -> MergeHead:
    n = len(FEATURES)
    w = np.zeros(n)
    w[FEATURES.index("pop7_log")] = 1.0  # the last week's sales pick, not the co-visitation order
    w[FEATURES.index("cosine")] = 0.5
    return MergeHead("m-t", SIGNALS.version, "e", 20, pool_text, np.zeros(n), np.ones(n), w, 0.0)


def _vectors(catalog: dict[str, str]) -> ItemVectors:
    rng = np.random.default_rng(1)
    m = rng.normal(size=(len(catalog), 8)).astype(np.float32)
    return ItemVectors(tuple(catalog), m / np.linalg.norm(m, axis=1, keepdims=True))


def test_chosen_instances_are_the_merges_picks_with_their_rows(tmp_path: Path) -> None:
    data = tiny_prepared(tmp_path)
    prepared = Prepared.load(data)
    catalog, vectors, head = prepared.catalog, _vectors(prepared.catalog), _head(5)
    choose = merge_chooser(head, vectors, catalog, 10)
    chosen = live_instances(prepared.interactions, prepared.frame("valid"), catalog, choose=choose)
    pooled = pooled_baskets(prepared.interactions, prepared.frame("valid"), catalog, vectors, 20, 5)
    assert chosen.signals is not None and len(chosen.instances) == len(pooled) > 0
    differs = False
    plain = live_instances(prepared.interactions, prepared.frame("valid"), catalog, n_candidates=10)
    for inst, rows, b, co in zip(chosen.instances, chosen.signals, pooled, plain.instances, strict=True):
        picks = head.select(b.features, 10)
        assert list(inst.candidates) == [b.pool.items[k] for k in picks]
        np.testing.assert_array_equal(rows, b.signals[picks])
        differs |= list(inst.candidates) != list(co.candidates)
    assert differs  # the merge's lists are not co-visitation's

    # The gate's valid set and the training windows go through the same choice.
    valid = EvalSet.build(data, "valid", max_instances=None, choose=choose)
    kept = [i for i in chosen.instances if i.positives.intersection(i.candidates)]
    assert [list(c) for c in valid.candidates] == [list(i.candidates) for i in kept]
    windows = training_windows(
        prepared.interactions, prepared.split.train_end, catalog, windows=2, days=10, choose=choose
    )
    for w in windows:
        for inst, rows in zip(w.instances, w.signals, strict=True):
            assert len(inst.candidates) == len(rows) <= 10
