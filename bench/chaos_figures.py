"""The pure parts of `bench chaos`: its fault schedule, the figures computed from what it observed, and
the report.

Nothing here touches a service, so every rule the run is judged by is unit-tested on its own.
"""

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rankstream.bench.results import ChaosBench

FAULTS = ("kill9", "broker_restart", "redis_failover", "redis_stall", "corrupt_publish", "bad_burst")
# The schedule leaves the run's first tenth fault-free (the fleet settles) and its last fifth too
# (what every fault left behind must drain while the load goes on).
_FIRST, _LAST = 0.1, 0.8


@dataclass(frozen=True)
class Planned:
    """A fault due `at_s` seconds after the load started."""

    at_s: float
    kind: str


def fault_counts(minutes: float) -> dict[str, int]:
    """How many of each fault a run of `minutes` gets: every kind at least once, kill -9 several times."""
    counts = dict.fromkeys(FAULTS, 1)
    counts["kill9"] = max(3, round(minutes * 0.4))
    counts["redis_failover"] = max(1, round(minutes / 5))
    return counts


def schedule(duration_s: float, counts: Mapping[str, int], seed: int) -> list[Planned]:
    """The faults in a seeded random order, one in each equal slot of the faulted part of the run, at a
    random point of the slot's first half (so consecutive faults are at least half a slot apart)."""
    unknown = set(counts) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULTS)}")
    rng = random.Random(seed)
    kinds = [kind for kind in FAULTS for _ in range(counts.get(kind, 0))]
    rng.shuffle(kinds)
    if not kinds:
        return []
    start, width = duration_s * _FIRST, duration_s * (_LAST - _FIRST) / len(kinds)
    return [Planned(round(start + i * width + rng.uniform(0, width / 2), 1), k) for i, k in enumerate(kinds)]


def p99(values: Sequence[float]) -> float | None:
    """Nearest-rank 99th percentile (defined for any number of values); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[math.ceil(0.99 * len(ordered)) - 1], 1)


def p99_by_minute(samples: Iterable[tuple[float, float]], start: float, minutes: int) -> list[float | None]:
    """p99 latency (ms) of the lists written in each minute from `start`; samples are (written at, ms)."""
    by_minute: list[list[float]] = [[] for _ in range(minutes)]
    for written_at, ms in samples:
        m = int((written_at - start) // 60)
        if 0 <= m < minutes:
            by_minute[m].append(ms)
    return [p99(v) for v in by_minute]


def lists_by_minute(writes: Iterable[float], start: float, minutes: int) -> list[int]:
    """How many list writes were seen in each minute from `start`."""
    written = Counter(int((w - start) // 60) for w in writes)
    return [written[m] for m in range(minutes)]


def minutes_without_progress(writes: Iterable[float], start: float, first_recovery: float | None, end: float) -> int:
    """Minutes of the run (from `start`) that began after the first recovery finished and before the lists
    caught up (`end`: the last list written) in which no list was written: events were pending (the load
    runs throughout) and the lists did not advance."""
    if first_recovery is None:
        return 0
    minutes = max(math.ceil((end - start) / 60), 0)
    written = Counter(int((w - start) // 60) for w in writes)
    return sum(1 for m in range(minutes) if start + 60 * m >= first_recovery and not written[m])


@dataclass(frozen=True)
class Sent:
    """A valid event as produced: whose, which item, where it landed."""

    user: str
    item: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Stored:
    """A user's final state in Redis: the (partition, offset) their list reflects, their history."""

    partition: int
    offset: int
    history: tuple[str, ...]


def count_lost(sent: Iterable[Sent], stored: Mapping[str, Stored], history_len: int) -> int:
    """Valid events that did not reach their user's final state.

    An event is lost when its user has no list, or the list reflects an earlier offset of the event's
    partition (users are keyed to partitions, so a later offset reflects every earlier one), or its item
    is missing from the stored history where the reference history has it (the user's reflected events,
    newest first, each item once, `history_len` long): each such item is at least one event that the
    offset fence counted as applied but never folded in.
    """
    by_user: dict[str, list[Sent]] = {}
    for s in sent:
        by_user.setdefault(s.user, []).append(s)
    lost = 0
    for user, events in by_user.items():
        state = stored.get(user)
        reflected = []
        if state is not None:
            reflected = [e for e in events if e.partition == state.partition and e.offset <= state.offset]
        lost += len(events) - len(reflected)
        if state is not None:
            ordered = sorted(reflected, key=lambda e: e.offset, reverse=True)
            reference = list(dict.fromkeys(e.item for e in ordered))[:history_len]
            lost += len(set(reference) - set(state.history))
    return lost


@dataclass(frozen=True)
class DeadLetter:
    """One record read back from the DLQ topic: where its source was, and the reason header."""

    source_topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True)
class DlqTally:
    """The DLQ against what was sent bad: distinct source records, by reason; repeats of a source (a replay
    after a kill dead-letters its batch again); bad records missing from it or under another reason."""

    dead: int
    by_reason: dict[str, int]
    repeats: int
    mismatched: int


def tally_dlq(letters: Iterable[DeadLetter], topic: str, bad: Mapping[tuple[int, int], str]) -> DlqTally:
    """Compare the DLQ's letters for `topic` with `bad` ((partition, offset) -> expected reason)."""
    first: dict[tuple[int, int], str] = {}
    repeats = 0
    for letter in letters:
        if letter.source_topic != topic:
            continue
        at = (letter.partition, letter.offset)
        if at in first:
            repeats += 1
        else:
            first[at] = letter.reason
    mismatched = sum(1 for at, reason in bad.items() if first.get(at) != reason)
    return DlqTally(len(first), dict(sorted(Counter(first.values()).items())), repeats, mismatched)


def format_chaos(r: ChaosBench) -> str:
    """The figures for a person; `r.to_json()` is the machine form."""
    faults = ", ".join(f"{k} {n}" for k, n in r.faults.items())
    rows = [
        f"{r.minutes} min at {r.rate} events/s, {r.replicas} replica processes, seed {r.seed}; faults: {faults}",
        f"events in {r.events}; lists reflecting the user's last event {r.users_reflected} of {r.users}; "
        f"lost {r.lost}; not reflected {r.not_reflected}",
        f"bad records {r.bad_records}; DLQ {r.dlq} (repeats {r.dlq_repeats}, mismatched {r.dlq_mismatched}): "
        + ", ".join(f"{k} {n}" for k, n in r.dlq_by_reason.items()),
        f"corrupt artifacts served: {r.corrupt_served}; minutes without progress after the first recovery "
        f"({r.first_recovery_s}s): {r.minutes_without_progress_after_recovery}; lag gone {r.caught_up_s}s after "
        "the last send",
        "minute   p99 ms   lists",
    ]
    for m, (p, n) in enumerate(zip(r.p99_ms_by_minute, r.lists_by_minute, strict=True)):
        rows.append(f"{m:>6} {p!s:>8} {n:>7}")
    rows.append("faults: " + "; ".join(f"{f.at_s}s {f.kind} ({f.recovered_s}s): {f.detail}" for f in r.fault_log))
    return "\n".join(rows)
