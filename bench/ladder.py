"""A replica fleet's maximum sustained rate, found as `bench stream` finds one scorer's: a ladder of rates,
each step judged from the lists written while it ran (the lag gone within `DRAIN_LIMIT_S` of its last
send, their p99 event -> Redis at most `P99_LIMIT_MS`)."""

import math
from collections.abc import Awaitable, Callable, Sequence

from rankstream.bench.latency import percentile
from rankstream.bench.lists import ListSample
from rankstream.bench.results import LadderStep
from rankstream.bench.stream import DRAIN_LIMIT_S, P99_LIMIT_MS, next_rate
from rankstream.stream.errors import JobError
from rankstream.stream.events import ClickEvent


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


async def climb(run: Callable[[float], Awaitable[LadderStep]], start: float, steps: int) -> list[LadderStep]:
    """Steps from `start`, at most `steps`, each rate after the last as `bench stream`'s ladder picks it."""
    ladder: list[LadderStep] = []
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
