"""The ladder that finds a maximum sustained rate, one scorer's (`bench stream`) or a replica fleet's
(`bench swap`): rates from a start, up by `STEP_UP` while each step keeps up (the lag gone within
`DRAIN_LIMIT_S` of its last send, p99 event -> Redis at most `P99_LIMIT_MS`), or down by `STEP_DOWN`
while the first rate fails."""

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from rankstream.bench.latency import percentile
from rankstream.bench.lists import ListSample
from rankstream.bench.results import LadderStep
from rankstream.stream.errors import JobError
from rankstream.stream.events import ClickEvent

DRAIN_LIMIT_S = 2.0
P99_LIMIT_MS = 1000.0
STEP_UP, STEP_DOWN = 1.25, 0.8


class Step(Protocol):
    @property
    def kept_up(self) -> bool: ...


S = TypeVar("S", bound=Step)


def next_rate(rate: float, first_kept_up: bool, kept_up: bool) -> float | None:
    """The ladder's rate after a step at `rate`: up by `STEP_UP` while steps keep up, down by `STEP_DOWN`
    while they fail as the first did; None once a step goes the other way, which ends the ladder."""
    if kept_up != first_kept_up:
        return None
    return round(rate * (STEP_UP if first_kept_up else STEP_DOWN), 1)


def replayed(events: list[ClickEvent], n: int) -> list[ClickEvent]:
    """The first `n` events, the test period again if `n` outlasts it."""
    return (events * (n // len(events) + 1))[:n]


def written_between(samples: Sequence[ListSample], start: float, end: float = math.inf) -> list[ListSample]:
    """The lists written from `start` to `end` (unix s, both included)."""
    return [s for s in samples if start <= s.written_at <= end]


def judge_step(
    rate: float, events: int, samples: Sequence[ListSample], *, started: float, sent: float, drained: float
) -> LadderStep:
    """A ladder step from the lists written between its start and the lag gone (unix s): kept up when the
    lag was gone within `DRAIN_LIMIT_S` of the last send and their p99 is at most `P99_LIMIT_MS`."""
    latencies = [s.latency_ms for s in written_between(samples, started, drained)]
    p99 = percentile(latencies, 99)
    drain_s = round(drained - sent, 2)
    kept_up = p99 is not None and p99 <= P99_LIMIT_MS and drain_s <= DRAIN_LIMIT_S
    return LadderStep(rate, p99, kept_up, events, drain_s, len(latencies))


async def climb(run: Callable[[float], Awaitable[S]], start: float, steps: int) -> list[S]:
    """Steps from `start`, at most `steps`, each rate after the last as `next_rate` picks it."""
    ladder: list[S] = []
    rate = start
    for _ in range(steps):
        step = await run(rate)
        ladder.append(step)
        following = next_rate(rate, ladder[0].kept_up, step.kept_up)
        if following is None:
            break
        rate = following
    return ladder


def sustained(ladder: Sequence[LadderStep]) -> float:
    """The highest rate of the ladder kept up.

    Raises:
        JobError: no step was kept up.
    """
    kept = [s.rate for s in ladder if s.kept_up]
    if not kept:
        tried = ", ".join(f"{s.rate:g}" for s in ladder)
        raise JobError(
            f"the replicas kept up with none of the ladder's rates ({tried} events/s); start it lower with "
            "--ladder-start, allow more steps with --ladder-steps, or give the rate with --rate"
        )
    return max(kept)


def ladder_rows(ladder: list[LadderStep]) -> list[str]:
    """The ladder as a table for a person."""
    rows = [
        f"ladder on the first version (kept up: lag gone within {DRAIN_LIMIT_S:g}s of the last send, "
        f"p99 <= {P99_LIMIT_MS:.0f} ms)",
        f"{'ev/s':>8} {'events':>7} {'p99 ms':>8} {'lists':>6} {'drained s':>9}  kept up",
    ]
    for s in ladder:
        rows.append(
            f"{s.rate:>8} {s.events:>7} {s.p99_ms!s:>8} {s.lists:>6} {s.drained_s_after_last_send:>9}  {s.kept_up}"
        )
    return rows
