"""Text retrieval in the scorer, on the real Kafka and Redis: a scorer started before an item exists
serves it without a restart (a click on it is not refused; it becomes a text neighbour of the item whose
title it shares), and its candidates merge co-visitation with text neighbours."""

from datetime import UTC, datetime

import numpy as np
import pytest

from rankstream.ops.catalog import embed_catalog, wait_applied, write_title_vectors
from rankstream.stream import batch as b
from rankstream.stream.candidates import covisit_candidates
from rankstream.stream.catalogstore import Encoders, newest_change, pack, write_changes
from rankstream.stream.encoder import TextEncoder
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import ClickEvent
from rankstream.stream.ranker import Ranker
from rankstream.stream.retrieval import FEATURES, MERGE_FILE, MergeHead, interleave, learned_merge, pool
from rankstream.stream.scorer import Scorer
from rankstream.stream.scoring import score_users
from rankstream.stream.signals import SIGNALS
from rankstream.stream.store import Store, UserState
from rankstream.stream.tables import Tables

from .conftest import CATALOG, ITEMS, wait_for
from .serving import produce, serving, settings_for, setup_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW = "N900"


async def test_a_new_item_is_served_without_a_restart(stack, store: Store, tiny_model, encoder_dir, topic) -> None:  # type: ignore[no-untyped-def]
    await setup_topics(stack, topic)
    s = settings_for(stack, topic, tiny_model).model_copy(
        update={"encoder_dir": encoder_dir, "text_candidates": 5, "catalog_refresh_ms": 600_000}
    )
    await write_title_vectors(store.client, await embed_catalog(s, dict(CATALOG)))
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    async with serving(scorer) as task:
        tables = scorer.tables
        assert tables.indexed and NEW not in tables.catalog
        # Text neighbours of an item: other items, none of the history, best first.
        near = tables.text_neighbours([ITEMS[0]], 5)
        assert len(near) == 5 and ITEMS[0] not in near and set(near) <= set(CATALOG)

        # The catalog job's write for a new item whose title is an existing item's: its vector is that
        # item's, so it is that item's nearest text neighbour once a replica has applied the change.
        encoder = TextEncoder.load(encoder_dir)
        title = CATALOG[ITEMS[3]]
        vector = encoder.encode([title])[0]
        await write_changes(
            store.client, Encoders(encoder.version), {NEW: (title, {encoder.version: pack(vector)})}, []
        )
        # A click on it at once: the replica reads the change log before refusing an unknown item.
        ev = ClickEvent(user_id="u-new", item_id=NEW, ts=datetime(2011, 11, 2, tzinfo=UTC))
        await produce(stack.bootstrap, topic, [(b"u-new", ev.to_bytes())])

        async def listed() -> bool:
            if task.done():
                task.result()
            return await store.read_list("u-new") is not None

        await wait_for(listed, limit_s=60)
        assert scorer.stats.dlq == 0
        assert NEW in tables.catalog
        assert tables.text_neighbours([ITEMS[3]], 1) == [NEW]
        assert await store.read_history("u-new") == [NEW]

        # Removed again: gone from the catalog and the index after the next refresh.
        await write_changes(store.client, Encoders(encoder.version), {}, [NEW])
        await tables.refresh_catalog(now=True)
        assert NEW not in tables.catalog and NEW not in tables.text_neighbours([ITEMS[3]], len(CATALOG))


async def test_an_idle_scorer_applies_catalog_changes(stack, store: Store, tiny_model, encoder_dir, topic) -> None:  # type: ignore[no-untyped-def]
    """With no click to process, a replica still follows the change log: operators (and `bench catalog`,
    and the demo) read how far it got, and a new item is servable before anyone clicks."""
    await setup_topics(stack, topic)
    s = settings_for(stack, topic, tiny_model).model_copy(
        update={"encoder_dir": encoder_dir, "catalog_refresh_ms": 50, "replica": "idle-replica"}
    )
    await write_title_vectors(store.client, await embed_catalog(s, dict(CATALOG)))
    scorer = Scorer(s, Ranker.load(tiny_model), store)
    async with serving(scorer) as task:
        encoder = TextEncoder.load(encoder_dir)
        after = await newest_change(store.client)
        title = CATALOG[ITEMS[2]]
        vector = pack(encoder.encode([title])[0])
        await write_changes(store.client, Encoders(encoder.version), {NEW: (title, {encoder.version: vector})}, [])
        got = await wait_applied(store.client, NEW, after, ["idle-replica"], limit_s=30)
        assert not task.done()  # the scorer is still serving, not failed
        assert got.stored_ms is not None and got.servable_ms is not None and got.servable_ms >= got.stored_ms
        assert NEW in scorer.tables.catalog and scorer.stats.events == 0


async def _one_click(  # type: ignore[no-untyped-def]
    store: Store, s, encoder_dir, topic: str, merge: MergeHead | None = None
) -> tuple[Tables, b.UserPlan, dict[str, list[str]]]:
    """Tables over the catalog's title vectors, a user's plan for one click, and their items' neighbours."""
    await write_title_vectors(store.client, await embed_catalog(s, dict(CATALOG)))
    encoder = TextEncoder.load(encoder_dir)
    tables = Tables(store, encoder=(encoder.version, encoder.dim), merge=merge)
    await tables.load()
    ev = ClickEvent(user_id="u1", item_id=ITEMS[5], ts=datetime(2011, 11, 2, tzinfo=UTC))
    valid = b.Valid(0, 0, 1_700_000_000_000, ev, topic, b"u1", ev.to_bytes())
    plan = b.plan_user("u1", [valid], UserState((), None, None), s.history_len)
    assert plan is not None
    return tables, plan, await tables.neighbours_for(b.recent_items([plan]))


async def test_candidates_merge_covisitation_and_text(stack, store: Store, tiny_model, encoder_dir, topic) -> None:  # type: ignore[no-untyped-def]
    s = settings_for(stack, topic, tiny_model).model_copy(
        update={"encoder_dir": encoder_dir, "text_candidates": 4, "candidates": 20}
    )
    tables, plan, neighbours = await _one_click(store, s, encoder_dir, topic)
    trending = await tables.trending()
    text = tables.text_neighbours(plan.history, s.text_candidates)
    cands, pairs = b.candidate_pairs(plan, neighbours, trending, tables.catalog, s.candidates, text)
    covisit = covisit_candidates(plan.history, neighbours, trending, s.candidates)
    assert cands == interleave(covisit, text, s.candidates)
    assert len(cands) == len(set(cands)) == len(pairs) <= s.candidates
    assert ITEMS[5] not in cands
    # Ten of co-visitation first, then text and co-visitation in turn: all four text neighbours fit.
    assert len(text) == 4 and cands[:10] == covisit[:10] and set(text) <= set(cands)


class _Recorder:
    """A stand-in model reading signals: records the lists and rows it is given, scores them in order."""

    version = "recorder"
    signals = SIGNALS.version
    linear = None

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[tuple[str, str]]], list[np.ndarray] | None]] = []

    def score_lists(self, lists, signals=None, *, top=0):  # type: ignore[no-untyped-def]
        self.calls.append((list(lists), None if signals is None else list(signals)))
        return [-np.arange(len(pairs), dtype=np.float32) for pairs in lists]


async def test_a_learned_merge_picks_the_candidates_and_their_rows(
    stack, store: Store, tiny_model, encoder_dir, topic, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """With RANKSTREAM_MERGE_DIR, a user's candidates are the head's pick from the pool of both sources,
    computed from what the scorer reads (as the offline walk computes them), and the model gets the
    picked candidates' signal rows; a bad merge file stops the start with the setting named."""
    weight = np.zeros(len(FEATURES))
    weight[FEATURES.index("cosine")] = 1.0  # title similarity alone: text neighbours come first
    n = len(FEATURES)
    head = MergeHead("m-test", SIGNALS.version, "b", 20, 4, np.zeros(n), np.ones(n), weight, 0.0)
    (tmp_path / MERGE_FILE).write_text(head.to_json())
    s = settings_for(stack, topic, tiny_model).model_copy(
        update={"encoder_dir": encoder_dir, "merge_dir": tmp_path, "candidates": 20}
    )
    tables, plan, neighbours = await _one_click(store, s, encoder_dir, topic, MergeHead.read(tmp_path))
    model = _Recorder()
    scored = await score_users(model, [plan], neighbours, tables, s)  # type: ignore[arg-type]
    assert not scored.failed and len(scored.writes) == 1

    # The same pick from the parts, as `rankstream eval --merge` makes it offline.
    covisit = b.covisit_pool(plan, neighbours, await tables.trending(), tables.catalog, 20)
    text = tables.text_neighbours(plan.history, 4)
    pooled = pool(covisit, text)
    lists = {**neighbours, **await tables.neighbours_for(pooled.items)}
    rows = b.user_signals(plan, pooled.items, lists, await tables.counts_for(pooled.items), tables.catalog)
    cosine = tables.text_cosine(plan.history, pooled.items)
    want, want_rows = learned_merge(head, pooled, rows, cosine, 20)
    assert len(text) == 4 and want[:4] == text  # by cosine alone, the text neighbours lead
    ((got_lists, got_rows),) = model.calls
    assert got_lists == [b.pairs_for(plan, want, tables.catalog)]
    assert got_rows is not None
    np.testing.assert_array_equal(got_rows[0], want_rows)
    assert [c for c, _ in scored.writes[0].items] == want[: s.top_k]

    (tmp_path / MERGE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="RANKSTREAM_MERGE_DIR.*not JSON"):
        Scorer(s, Ranker.load(tiny_model), store)
