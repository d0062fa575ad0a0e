"""`rankstream bench events`: `bench live`'s per-event check offline, with lists that are never late.

`bench live` judges each event against the list its user had on screen, and at a fixed rate on shared
cores that list is often a few lines old: how old follows how fast the scorer wrote, so the per-event
figures mix the tables with the machine. Here every sampled test event (every `every`-th, its user with a
history) is judged against the list the scorer would write from the state just before it: the user's
every earlier event (the basket's earlier lines included) and the tables after
- `live`: every earlier event (what the tables job has applied, with no delay);
- `held`: only the train split's events (`bench live`'s frozen arm);
- `before`: every event of an earlier time, not the lines of the event's own basket, which share its time
  (what training and `eval --end-to-end` read: the tables just before a basket).
Candidates, signals and the model's order are the scorer's (`live_candidates`, `live_signals`,
`ranked_lists`); a hit is the event's item in the top 10. Intervals: users resampled together, as in
`bench live`. CPU only, no Kafka or Redis: a quality figure, not a speed one.

Each pair's reach split says where a ratio comes from: the events whose item is a candidate of both arms
(where the two differ only by how the model ranks what each arm's tables propose), of one arm only (what
that arm's tables reach and the other's do not), and each arm's hits in each part.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rankstream.bench.live import summarize
from rankstream.data.live_instances import PARTITIONS, live_candidates, live_signals
from rankstream.data.live_replay import LiveReplay, replay_events
from rankstream.data.prepare import Prepared
from rankstream.evaluation.endtoend import N_CANDIDATES, ListScorer, ranked_lists
from rankstream.stream.candidates import in_catalog
from rankstream.stream.errors import ConfigError
from rankstream.stream.live import LiveParams

TABLES = ("live", "held", "before")
TOP = 10


@dataclass(frozen=True)
class Checked:
    """One sampled event: its user, its item's place in the list (-1: not in it), whether its item was a
    candidate, and whether it continues a basket (its user's previous event has its time)."""

    user: str
    rank: int
    candidate: bool
    continuing: bool


def sampled(prepared: Prepared, every: int) -> tuple[list[tuple[str, str, int]], set[int]]:
    """The events in time order and the indices of every `every`-th test event among them."""
    events = list(replay_events(prepared.interactions))
    test_ms = int(prepared.split.valid_end.timestamp() * 1000)
    test = [k for k, e in enumerate(events) if e[2] >= test_ms]
    return events, set(test[every - 1 :: every])


def check(
    prepared: Prepared,
    ranker: ListScorer,
    rerank_top: int,
    tables: str,
    every: int,
    params: LiveParams | None = None,
) -> list[Checked]:
    """Every `every`-th test event whose user has a history, judged against a list written just before it."""
    if tables not in TABLES:
        raise ValueError(f"tables must be one of {TABLES}, not {tables!r}")
    if every < 1:
        raise ValueError(f"every must be a positive count of events, not {every}")
    events, picked = sampled(prepared, every)
    train_ms = int(prepared.split.train_end.timestamp() * 1000)
    catalog = prepared.catalog
    replay = LiveReplay(params or LiveParams(), PARTITIONS)
    seen: dict[str, dict[str, None]] = {}
    last: dict[str, int] = {}
    pending: list[tuple[str, str, int]] = []  # `before`: the events of the current time, not yet applied
    users, items, histories, cands, rows, continuing = [], [], [], [], [], []
    for k, (user, item, ts) in enumerate(events):
        if pending and pending[0][2] < ts:
            replay.apply_all(pending)
            pending.clear()
        history = seen.setdefault(user, {})
        if k in picked and history:
            newest_first = tuple(reversed(history))
            cs = in_catalog(live_candidates(replay, newest_first, N_CANDIDATES), catalog)
            users.append(user)
            items.append(item)
            histories.append(newest_first)
            cands.append(cs)
            rows.append(live_signals(replay, newest_first, cs, catalog, ts))
            continuing.append(last.get(user) == ts)
        if tables == "live" or (tables == "held" and ts < train_ms):
            replay.apply(user, item, ts)
        elif tables == "before":
            pending.append((user, item, ts))
        history.pop(item, None)  # the scorer's history: newest last, each item once
        history[item] = None
        last[user] = ts
    orders = ranked_lists(ranker, histories, cands, rows, catalog, rerank_top) if users else []
    return [
        Checked(u, o.index(i) if i in o[:TOP] else -1, i in cs, c)
        for u, i, o, cs, c in zip(users, items, orders, cands, continuing, strict=True)
    ]


@dataclass(frozen=True)
class Arm:
    events: int
    hit_rate_at_10: float
    ndcg_at_10: float
    ci95: dict[str, list[float]]
    candidate_rate: float  # the event's item among the candidates
    continuing: float  # share of the events that continue a basket


@dataclass(frozen=True)
class Reach:
    """One part of a pair's events: how many, and each arm's hits@10 among them."""

    events: int
    hits_a: int
    hits_b: int


@dataclass(frozen=True)
class EventsBench:
    every: int
    model: str
    arms: dict[str, Arm]
    ratios: dict[str, dict[str, dict[str, float | list[float]]]]  # "a / b" -> metric -> ratio, ci95
    ratios_continuing: dict[str, dict[str, dict[str, float | list[float]]]]  # the same, continuing events only
    reach: dict[str, dict[str, Reach]]  # "a / b" -> "both", "a only", "b only" (`reach_split`)
    seconds: dict[str, float]
    half_life_days: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def reach_split(a: Sequence[Checked], b: Sequence[Checked], names: tuple[str, str]) -> dict[str, Reach]:
    """The events whose item is a candidate of both arms, of `a` only, of `b` only. Both arms judged the
    same events in the same order (`check` samples them the same way whatever the tables)."""
    parts: dict[str, list[int]] = {"both": [0, 0, 0], f"{names[0]} only": [0, 0, 0], f"{names[1]} only": [0, 0, 0]}
    for x, y in zip(a, b, strict=True):
        if x.user != y.user:
            raise ValueError("the arms judged different events")
        if not (x.candidate or y.candidate):
            continue
        part = parts["both" if x.candidate and y.candidate else f"{names[0] if x.candidate else names[1]} only"]
        part[0] += 1
        part[1] += x.rank >= 0
        part[2] += y.rank >= 0
    return {k: Reach(*v) for k, v in parts.items()}


def _outcomes(checked: Sequence[Checked], only_continuing: bool = False) -> list[tuple[str, int]]:
    return [(c.user, c.rank) for c in checked if c.continuing or not only_continuing]


PAIRS = (("live", "held"), ("before", "held"), ("before", "live"))


def compare(
    checked: dict[str, list[Checked]],
    every: int,
    model: str,
    seconds: dict[str, float],
    half_life_days: float = LiveParams.half_life_days,
) -> EventsBench:
    """Each arm's figures and each pair's ratio, users resampled together (`bench.live.summarize`), and
    each pair's reach split."""
    arms = {}
    for name, events in checked.items():
        fig = summarize(_outcomes(events), _outcomes(events))[0]  # type: ignore[arg-type]
        n = max(len(events), 1)
        arms[name] = Arm(
            len(events),
            fig["hit_rate@10"][0],
            fig["ndcg@10"][0],
            {k: v[1] for k, v in fig.items()},
            round(sum(e.candidate for e in events) / n, 5),
            round(sum(e.continuing for e in events) / n, 5),
        )
    ratios, cont, reach = {}, {}, {}
    for a, b in PAIRS:
        if a in checked and b in checked:
            reach[f"{a} / {b}"] = reach_split(checked[a], checked[b], (a, b))
            ratios[f"{a} / {b}"] = summarize(_outcomes(checked[b]), _outcomes(checked[a]))[2]  # type: ignore[arg-type]
            cont[f"{a} / {b}"] = summarize(
                _outcomes(checked[b], True),
                _outcomes(checked[a], True),  # type: ignore[arg-type]
            )[2]
    return EventsBench(every, model, arms, ratios, cont, reach, seconds, half_life_days)


def format_events(r: EventsBench) -> str:
    rows = [
        f"every {r.every}th test event, model {r.model}, tables' half-life {r.half_life_days:g} days; lists "
        "written just before each event",
        "tables   events   hit-rate@10 [95% CI]        ndcg@10   item a candidate   continuing a basket",
    ]
    for name, a in r.arms.items():
        hr = a.ci95["hit_rate@10"]
        rows.append(
            f"{name:<7} {a.events:>7,}   {a.hit_rate_at_10:.4f} [{hr[0]:.4f}, {hr[1]:.4f}]   {a.ndcg_at_10:.4f}"
            f"   {a.candidate_rate:>16.4f}   {a.continuing:>19.3f}"
        )
    for pair, ms in r.ratios.items():
        hr = ms["hit_rate@10"]
        c = r.ratios_continuing[pair]["hit_rate@10"]
        rows.append(
            f"{pair} hit-rate@10: x{hr['ratio']:.3f} [{hr['ci95'][0]:.3f}, {hr['ci95'][1]:.3f}]; "  # type: ignore[index]
            f"continuing a basket x{c['ratio']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"  # type: ignore[index]
        )
        a, b = pair.split(" / ")
        parts = "; ".join(
            f"{part} {x.events:,} (hits {a} {x.hits_a:,}, {b} {x.hits_b:,})" for part, x in r.reach[pair].items()
        )
        rows.append(f"  item a candidate of {parts}")
    return "\n".join(rows)


def bench_events(
    prepared: Prepared,
    ranker: ListScorer,
    rerank_top: int,
    *,
    every: int,
    tables: Sequence[str] = TABLES,
    params: LiveParams | None = None,
) -> EventsBench:
    """`params`: the tables every arm keeps (default `LiveParams()`, what `rankstream load` seeds). A model
    reads its signals off these tables, so one trained on another half-life is judged off its own."""
    params = params or LiveParams()
    last = prepared.interactions["ts"].max()
    if last.timestamp() * 1000 >= params.weights_end_ms():
        raise ConfigError(
            f"a half-life of {params.half_life_days:g} days: the co-visitation weights (forward decay from 2010) "
            f"overflow before the data's last event ({last:%Y-%m-%d}); give a longer half-life"
        )
    checked, seconds = {}, {}
    for name in tables:
        t0 = time.perf_counter()
        checked[name] = check(prepared, ranker, rerank_top, name, every, params)
        seconds[name] = round(time.perf_counter() - t0, 1)
    return compare(checked, every, ranker.version, seconds, params.half_life_days)
