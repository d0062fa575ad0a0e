"""Pure micro-batch logic: group valid events by user, replay them onto stored state, build pairs.

No I/O here, so every rule about ordering, idempotence and coalescing is unit-testable.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rankstream.stream.candidates import covisit_candidates, in_catalog
from rankstream.stream.events import ClickEvent
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.live import ItemCounts, SalesView, event_ms
from rankstream.stream.retrieval import interleave
from rankstream.stream.signals import RECENT_ITEMS, candidate_signals
from rankstream.stream.store import UserState


@dataclass(frozen=True)
class Valid:
    """A validated event with where it came from."""

    partition: int
    offset: int
    timestamp_ms: int  # Kafka record time: when the event entered the system
    event: ClickEvent
    topic: str = ""
    key: bytes | None = None  # the record as it came, for the dead-letter topic if this user's state is bad
    value: bytes | None = None


@dataclass(frozen=True)
class UserPlan:
    """One user's work in a batch: their new history and the event the written list will reflect."""

    user_id: str
    history: tuple[str, ...]
    last: Valid
    events: int  # new events folded into this one scoring (coalescing)
    hits: int = 0  # of those, events whose item was in the list the user was shown
    shown_version: str | None = None  # the model version that wrote that list
    since_ms: int = 0  # Kafka time of the oldest of those events: how long this user has been waiting
    ranks: tuple[int, ...] = ()  # each event's item's place in the list on screen (-1: not in it); () if none
    offsets: tuple[int, ...] = ()  # those events' offsets (same order as `ranks`)
    shown_offset: int | None = None  # the offset of the event the list on screen reflects


def group_by_user(events: Iterable[Valid]) -> dict[str, list[Valid]]:
    """Events per user in arrival order (a user's events share one partition, so this is offset order)."""
    out: dict[str, list[Valid]] = {}
    for v in events:
        out.setdefault(v.event.user_id, []).append(v)
    return out


def plan_user(user_id: str, events: Sequence[Valid], state: UserState, history_len: int) -> UserPlan | None:
    """Fold a user's new events into the stored history; None when every event was already applied."""
    history = list(state.items)
    fresh = [v for v in events if not state.applied(v.topic, v.partition, v.offset)]
    if not fresh:
        return None
    shown = {item: rank for rank, item in enumerate(state.shown)}
    hits = 0
    ranks = []
    for v in fresh:
        item = v.event.item_id
        # Every event of this batch happened while the stored list was on screen.
        ranks.append(shown.get(item, -1))
        hits += item in shown
        if item in history:
            history.remove(item)
        history.insert(0, item)
    return UserPlan(
        user_id,
        tuple(history[:history_len]),
        fresh[-1],
        len(fresh),
        hits,
        state.shown_version,
        min(v.timestamp_ms for v in fresh),
        tuple(ranks) if state.shown_version is not None else (),
        tuple(v.offset for v in fresh) if state.shown_version is not None else (),
        state.offset,
    )


def hold_back(plans: Sequence[UserPlan], now_ms: float, quiet_ms: int) -> tuple[list[UserPlan], list[UserPlan]]:
    """(due, held): users still clicking (last event younger than `quiet_ms`) are held for a later batch,
    unless their oldest waiting event is already 3x that old. Times are Kafka record times: a producer
    whose clock runs ahead of ours (an event "from the future") holds nobody back."""
    if not quiet_ms:
        return list(plans), []
    due, held = [], []
    for p in plans:
        since_last = now_ms - p.last.timestamp_ms
        still_clicking = 0 <= since_last < quiet_ms and now_ms - p.since_ms < 3 * quiet_ms
        (held if still_clicking else due).append(p)
    return due, held


def oldest_first_chunks(plans: Sequence[UserPlan], size: int) -> list[list[UserPlan]]:
    """Plans in chunks of `size`, the longest-waiting users first: each chunk is written as soon as it is
    scored, so a batch's latency is spread by waiting time rather than by arrival in the batch."""
    ordered = sorted(plans, key=lambda p: p.since_ms)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def live_quality(plans: Iterable[UserPlan]) -> dict[str, tuple[int, int]]:
    """(events checked, hits) per model version whose list was on screen when the events happened."""
    out: dict[str, tuple[int, int]] = {}
    for p in plans:
        if p.shown_version is not None:
            checked, hits = out.get(p.shown_version, (0, 0))
            out[p.shown_version] = (checked + p.events, hits + p.hits)
    return out


def recent_items(plans: Iterable[UserPlan], recent: int = RECENT_ITEMS) -> list[str]:
    """Items whose neighbour lists the candidates need (each user's `recent` newest), without duplicates.

    Only these: every list read is merged from the live tables' shares, so the 50 items the signals
    look at in the history (matched against the candidates' lists) are not read for themselves."""
    seen: dict[str, None] = {}
    for p in plans:
        for it in p.history[:recent]:
            seen[it] = None
    return list(seen)


def candidate_pairs(
    plan: UserPlan,
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    catalog: Mapping[str, str],
    n: int,
    text: Sequence[str] = (),
) -> tuple[list[str], list[tuple[str, str]]]:
    """The user's candidates and their (history, candidate) text pairs: the co-visitation order, merged
    with the user's `text` neighbours when there are any (`stream.retrieval.interleave`)."""
    covisit = covisit_candidates(plan.history, neighbours, trending, n)
    cands = in_catalog(interleave(covisit, text, n) if text else covisit, catalog)
    return cands, pairs_for(plan, cands, catalog)


def covisit_pool(
    plan: UserPlan, neighbours: Mapping[str, Sequence[str]], trending: Sequence[str], catalog: Mapping[str, str], n: int
) -> list[str]:
    """The user's `n` best co-visitation candidates (trending fill) that have a title: a learned merge's
    co-visitation source (`stream.retrieval.pool`)."""
    return in_catalog(covisit_candidates(plan.history, neighbours, trending, n), catalog)


def pairs_for(plan: UserPlan, cands: Sequence[str], catalog: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (history, candidate) text pairs of the user's candidates, each with its place in the list."""
    query = history_text([catalog[i] for i in plan.history if i in catalog])
    return [(query, candidate_text(catalog[c], r)) for r, c in enumerate(cands)]


def signal_items(candidate_lists: Iterable[Sequence[str]]) -> list[str]:
    """Items whose neighbour lists the signals need beyond `recent_items`: every candidate, once."""
    seen: dict[str, None] = {}
    for cands in candidate_lists:
        for c in cands:
            seen[c] = None
    return list(seen)


def user_signals(
    plan: UserPlan,
    cands: Sequence[str],
    neighbours: Mapping[str, Sequence[str]],
    counts: Mapping[str, ItemCounts | SalesView],
    catalog: Mapping[str, str],
) -> np.ndarray:
    """The signal rows of a user's candidates, for a model that reads them (`stream.signals`).

    `neighbours` must hold the lists of `recent_items` and `signal_items`, `counts` those of
    `signal_items`; the statistics are taken at the user's latest event time, as training saw them.
    """
    at = event_ms(plan.last.event)
    stats = {c: counts[c].stats_at(at) for c in cands if c in counts}
    return candidate_signals(plan.history, cands, neighbours, stats, catalog)


def top_k(cands: Sequence[str], scores: Sequence[float], k: int) -> tuple[tuple[str, float], ...]:
    """Best k by score; ties keep the co-visitation order (stable sort)."""
    order = sorted(range(len(cands)), key=lambda i: -scores[i])[:k]
    return tuple((cands[i], float(scores[i])) for i in order)
