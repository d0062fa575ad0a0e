"""Latency figures of the benchmarks from raw samples: percentiles and the waiting / scoring split."""

import statistics
from collections.abc import Iterable

from rankstream.bench.results import BatchTimes, LatencySplit, Percentiles


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile of `values`, rounded for a report; None when too few values to tell."""
    return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 100 else None


def percentiles(values: list[float]) -> Percentiles:
    return Percentiles(p50=percentile(values, 50), p99=percentile(values, 99))


def batch_times(samples: Iterable[tuple[float, float, int]]) -> BatchTimes:
    """Percentiles of (poll ms, process ms, records) per batch. A phase holds tens of batches, not
    thousands: these interpolate between the batches seen (never beyond the slowest), and need 10."""

    def within(values: list[float]) -> Percentiles:
        if len(values) < 10:
            return Percentiles(None, None)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return Percentiles(p50=round(cuts[49], 1), p99=round(cuts[98], 1))

    rows = list(samples)
    return BatchTimes(
        batches=len(rows),
        poll_ms=within([p for p, _, _ in rows]),
        process_ms=within([t for _, t, _ in rows]),
        records=within([float(n) for _, _, n in rows]),
    )


def latency_split(parts: Iterable[tuple[float, float]]) -> LatencySplit:
    """p50/p99 of each part of (waiting, scoring + write) samples, and what the events at or above the
    p99 of their sum spent in each part on average."""
    samples = list(parts)
    waiting = [w for w, _ in samples]
    scoring = [s for _, s in samples]
    total_p99 = percentile([w + s for w, s in samples], 99)
    tail = [] if total_p99 is None else [(w, s) for w, s in samples if w + s >= total_p99]
    return LatencySplit(
        events=len(samples),
        waiting=percentiles(waiting),
        scoring=percentiles(scoring),
        tail_waiting_mean=round(statistics.fmean(w for w, _ in tail), 1) if tail else None,
        tail_scoring_mean=round(statistics.fmean(s for _, s in tail), 1) if tail else None,
    )
