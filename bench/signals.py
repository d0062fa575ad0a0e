"""`python -m rankstream.bench.signals`: the scorer's Python work per scored user, by stage: candidates and
their text pairs, then the serve-time signals, on the real tables and real users.

Offline, no services, one process. The shares are `seeded` (the history before the test split) and moved
by the first `--warm` test events; each user's history is their items newest first (each once, 50 kept),
as the scorer stores it. The next `--users` test events are each one scoring, in time order, as a scorer
at one event per user per batch would make them. Every neighbour list and item count they need is merged
once before timing, as `stream.tables.Tables` serves them from its cache (most reads are cache hits;
`python -m rankstream.bench.reads` times the misses); item counts are served in the view the scorer
reads (`SalesView`), fresh for each pass, so the first use of an item on a day is timed too. Each stage
is timed over all the scorings, best of `--passes`: this machine is shared.
"""

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rankstream.data.live_replay import history_before, replay_events, seeded
from rankstream.data.prepare import Prepared
from rankstream.ops.load import split_events
from rankstream.stream import batch as b
from rankstream.stream.events import ClickEvent
from rankstream.stream.live import ItemCounts, SalesView, event_ms, merge_counts, merge_neighbours
from rankstream.stream.signals import HISTORY_ITEMS

CANDIDATES = 50  # the scorer's default `RANKSTREAM_CANDIDATES`


@dataclass(frozen=True)
class SignalsBench:
    warm_events: int
    scorings: int
    candidates: int  # per scoring, mean
    us_candidates: float  # per scoring: `batch.candidate_pairs`
    us_signals: float  # per scoring: `batch.user_signals`
    us_total: float


def _histories(prepared: Prepared, events: list[ClickEvent]) -> dict[str, list[str]]:
    """Each user's items newest first, each once, `HISTORY_ITEMS` kept: before the test split, then `events`."""
    hist: dict[str, list[str]] = {}
    for user, item, _ in replay_events(history_before(prepared)):
        _push(hist.setdefault(user, []), item)
    for e in events:
        _push(hist.setdefault(e.user_id, []), e.item_id)
    return hist


def _push(history: list[str], item: str) -> None:
    if item in history:
        history.remove(item)
    history.insert(0, item)
    del history[HISTORY_ITEMS:]


@dataclass(frozen=True)
class Inputs:
    """What the timed scorings read: their plans, candidates, and the merged tables they need."""

    plans: list[b.UserPlan]
    candidates: list[list[str]]
    neighbours: dict[str, list[str]]
    counts: dict[str, ItemCounts]
    trending: list[str]
    catalog: dict[str, str]


def inputs(data: Path, *, warm: int, users: int, partitions: int) -> Inputs:
    prepared = Prepared.load(data)
    tables = seeded(prepared, partitions)
    evs = split_events(data, "test", warm + users)
    for e in evs[:warm]:
        tables.apply(e.user_id, e.item_id, event_ms(e))
    hist = _histories(prepared, evs[:warm])
    plans = []
    for e in evs[warm:]:
        history = hist.setdefault(e.user_id, [])
        _push(history, e.item_id)
        plans.append(b.UserPlan(e.user_id, tuple(history), b.Valid(0, 0, event_ms(e), e), 1))
    n = tables.params.neighbours
    neighbours: dict[str, list[str]] = {}

    def merge(items: list[str]) -> None:  # as `Tables` does: each share's top, summed
        for it in items:
            if it not in neighbours:
                neighbours[it] = merge_neighbours((dict(s.top(it)) for s in tables.shares), n)

    merge(b.recent_items(plans))
    trending, catalog = tables.trending(), prepared.catalog
    cands = [b.candidate_pairs(p, neighbours, trending, catalog, CANDIDATES)[0] for p in plans]
    items = b.signal_items(cands)
    merge(items)
    counts = {it: merge_counts(s.counts.get(it) for s in tables.shares) for it in items}
    return Inputs(plans, cands, neighbours, counts, trending, catalog)


def time_stages(
    x: Inputs,
    passes: int,
    user_signals: Callable[..., object] = b.user_signals,
    view: Callable[[ItemCounts], object] = SalesView,
) -> tuple[float, float]:
    """(µs per scoring for the candidates, for the signals), best of `passes`."""
    t_cands, t_signals = [], []
    for _ in range(passes):
        t0 = time.perf_counter()
        for p in x.plans:
            b.candidate_pairs(p, x.neighbours, x.trending, x.catalog, CANDIDATES)
        t_cands.append(time.perf_counter() - t0)
        views = {it: view(c) for it, c in x.counts.items()}
        t0 = time.perf_counter()
        for p, c in zip(x.plans, x.candidates, strict=True):
            user_signals(p, c, x.neighbours, views, x.catalog)
        t_signals.append(time.perf_counter() - t0)
    per = 1e6 / max(1, len(x.plans))
    return min(t_cands) * per, min(t_signals) * per


def run(data: Path, *, warm: int, users: int, partitions: int, passes: int) -> SignalsBench:
    x = inputs(data, warm=warm, users=users, partitions=partitions)
    us_c, us_s = time_stages(x, passes)
    return SignalsBench(
        warm_events=warm,
        scorings=len(x.plans),
        candidates=round(sum(map(len, x.candidates)) / max(1, len(x.candidates))),
        us_candidates=round(us_c, 1),
        us_signals=round(us_s, 1),
        us_total=round(us_c + us_s, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m rankstream.bench.signals", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("var/data"))
    ap.add_argument("--warm", type=int, default=20_000, help="test events applied to the tables first")
    ap.add_argument("--users", type=int, default=5_000, help="scorings timed: the test events after those")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.data, warm=a.warm, users=a.users, partitions=a.partitions, passes=a.passes)
    if a.json:
        print(json.dumps(asdict(r)))
        return
    print(f"{r.scorings} scorings after {r.warm_events} test events, {r.candidates} candidates each (mean)")
    print(f"µs per scoring: candidates {r.us_candidates}, signals {r.us_signals}, total {r.us_total}")


if __name__ == "__main__":
    main()
