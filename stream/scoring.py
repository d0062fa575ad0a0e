"""Scoring one chunk of users: candidates, signals, one model call, top-k lists to write.

A user whose candidates, signals or model input raise is set apart with the error as their dead-letter
reason, so one user's input never fails the others.
"""

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rankstream.stream import batch as b
from rankstream.stream.events import Rejected, internal_error
from rankstream.stream.ranker import Ranker
from rankstream.stream.retrieval import Pool, learned_merge, pool
from rankstream.stream.settings import Settings
from rankstream.stream.store import ListWrite
from rankstream.stream.tables import Tables

log = logging.getLogger(__name__)

_UserPairs = tuple[b.UserPlan, list[str], list[tuple[str, str]]]


# Pre-selected candidates per user when the artifact decides: the linear part's top 10 cost no NDCG@10
# on test or valid against scoring all 50 (docs/results.md), for a fraction of the pairs.
AUTO_RERANK_TOP = 10


def rerank_top_for(settings: Settings, ranker: Ranker) -> int:
    """Candidates to cross-encode per user (0: all): the setting, else what the artifact supports."""
    if settings.rerank_top is not None:
        return settings.rerank_top
    return max(AUTO_RERANK_TOP, settings.top_k) if ranker.linear is not None else 0


@dataclass(frozen=True)
class Scored:
    writes: list[ListWrite]
    pairs: int  # pairs cross-encoded
    failed: dict[str, Rejected]  # user -> why they were not scored
    retrieve_s: float = 0.0  # time spent finding text neighbours (part of the scoring stage)


async def score_users(
    ranker: Ranker,
    plans: list[b.UserPlan],
    neighbours: Mapping[str, Sequence[str]],
    tables: Tables,
    settings: Settings,
) -> Scored:
    """Each user's list, scored by `ranker` in one call (one padded ONNX Runtime batch per user).

    Candidates: co-visitation, merged with `settings.text_candidates` text neighbours per user when the
    tables index title vectors (`stream.retrieval`)."""
    failed: dict[str, Rejected] = {}
    per_user: list[_UserPairs] = []
    trending = await tables.trending()
    retrieve_s = 0.0
    signals: list[np.ndarray] | None = None
    if tables.merge is not None:
        t0 = time.perf_counter()
        per_user, signals = await _merged(plans, neighbours, trending, tables, settings, failed)
        retrieve_s = time.perf_counter() - t0
        if ranker.signals is None:
            signals = None
    else:
        for p in plans:
            try:
                t0 = time.perf_counter()
                text = tables.text_neighbours(p.history, settings.text_candidates)
                retrieve_s += time.perf_counter() - t0
                pairs = b.candidate_pairs(p, neighbours, trending, tables.catalog, settings.candidates, text)
                per_user.append((p, *pairs))
            except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
                failed[p.user_id] = internal_error(exc)
        if ranker.signals is not None:  # the model also reads serve-time signals: candidates' neighbours too
            per_user, signals = await _with_signals(per_user, neighbours, tables, failed)
    t0 = time.perf_counter()
    top = rerank_top_for(settings, ranker)
    try:
        scores = await asyncio.to_thread(ranker.score_lists, [pairs for *_, pairs in per_user], signals, top=top)
    except Exception:  # noqa: BLE001 - find the user whose input the model cannot take
        per_user, scores = await _one_by_one(ranker, per_user, signals, top, failed)
    n_pairs = sum(min(len(pairs), top) if top else len(pairs) for *_, pairs in per_user)
    log.debug("scored %d pairs for %d users in %.3fs", n_pairs, len(per_user), time.perf_counter() - t0)
    writes = [
        ListWrite(
            p.user_id,
            p.history,
            b.top_k(cands, s, settings.top_k),
            ranker.version,
            p.last.partition,
            p.last.offset,
            p.last.timestamp_ms,
            p.last.topic,
        )
        for (p, cands, _), s in zip(per_user, scores, strict=True)
    ]
    return Scored(writes, n_pairs, failed, retrieve_s)


async def _merged(
    plans: list[b.UserPlan],
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    tables: Tables,
    settings: Settings,
    failed: dict[str, Rejected],
) -> tuple[list[_UserPairs], list[np.ndarray]]:
    """Each user's candidates from the learned merge (`stream.retrieval`), their pairs and signal rows:
    the pool's signals are read once, and the rows of the chosen candidates are the ones the model gets."""
    head = tables.merge
    assert head is not None
    pools: dict[str, Pool] = {}
    for p in plans:
        try:
            covisit = b.covisit_pool(p, neighbours, trending, tables.catalog, head.pool_covisit)
            pools[p.user_id] = pool(covisit, tables.text_neighbours(p.history, head.pool_text))
        except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
            failed[p.user_id] = internal_error(exc)
    pooled, pool_rows = await _with_signals(
        [(p, pools[p.user_id].items, []) for p in plans if p.user_id in pools], neighbours, tables, failed
    )
    per_user, signals = [], []
    for (p, items, _), rows in zip(pooled, pool_rows, strict=True):
        try:
            cosine = tables.text_cosine(p.history, items)
            cands, chosen = learned_merge(head, pools[p.user_id], rows, cosine, settings.candidates)
            per_user.append((p, cands, b.pairs_for(p, cands, tables.catalog)))
            signals.append(chosen)
        except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
            failed[p.user_id] = internal_error(exc)
    return per_user, signals


async def _with_signals(
    per_user: list[_UserPairs], neighbours: Mapping[str, Sequence[str]], tables: Tables, failed: dict[str, Rejected]
) -> tuple[list[_UserPairs], list[np.ndarray]]:
    """The users whose signal rows could be computed, and those rows."""
    items = b.signal_items(c for _, c, _ in per_user)
    lists = {**neighbours, **await tables.neighbours_for(items)}
    counts = await tables.counts_for(items)
    kept, signals = [], []
    for p, cands, pairs in per_user:
        try:
            signals.append(b.user_signals(p, cands, lists, counts, tables.catalog))
            kept.append((p, cands, pairs))
        except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
            failed[p.user_id] = internal_error(exc)
    return kept, signals


async def _one_by_one(
    ranker: Ranker,
    per_user: list[_UserPairs],
    signals: list[np.ndarray] | None,
    top: int,
    failed: dict[str, Rejected],
) -> tuple[list[_UserPairs], list[np.ndarray]]:
    """After a batch raised: score users one at a time; those that raise again join `failed`."""
    kept, scores = [], []
    for i, (p, cands, pairs) in enumerate(per_user):
        sig = None if signals is None else [signals[i]]
        try:
            scores += await asyncio.to_thread(ranker.score_lists, [pairs], sig, top=top)
            kept.append((p, cands, pairs))
        except Exception as exc:  # noqa: BLE001 - this user's failure, not the batch's
            failed[p.user_id] = internal_error(exc)
    return kept, scores
