"""`rankstream bench stream --repeat N`: the whole benchmark N times back to back, and the worst run.

A figure that holds on one run may not on the next (the machine, the broker's page cache, a collection
landing in a phase): what a person can rely on is the worst of several runs, each measured as one
`bench stream` measures it, backlog drain included.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankstream.bench.results import RepeatedStreamBench, StreamBench, Worst
from rankstream.bench.stream import bench_stream, format_bench

log = logging.getLogger(__name__)


def lost_in(run: StreamBench) -> int:
    """Events one run lost, over all its phases."""
    return sum(p.lost for p in (run.max, *run.ladder, run.fixed))


def worst_of(runs: Sequence[StreamBench]) -> Worst:
    """The lowest maximum sustained rate (a run that sustained none is the lowest), the highest p99 at
    the fixed share (among runs that measured one), the most events lost."""
    if not runs:
        raise ValueError("worst_of needs at least one run")
    sustained = [r.max_sustained_events_per_s for r in runs]
    p99s = [r.fixed.latency_ms.p99 for r in runs if r.fixed.latency_ms.p99 is not None]
    return Worst(
        max_sustained_events_per_s=None if None in sustained else min(s for s in sustained if s is not None),
        p99_ms_at_share=max(p99s) if p99s else None,
        lost=max(lost_in(r) for r in runs),
    )


async def bench_stream_repeated(home: Path, model_dir: Path, repeat: int, **options: Any) -> RepeatedStreamBench:
    """`bench_stream(home, model_dir, **options)` `repeat` times in a row, and the worst of the runs."""
    runs = []
    for k in range(repeat):
        run = await bench_stream(home, model_dir, **options)
        log.info(
            "run %d/%d: max sustained %s events/s, p99 at the share %s ms, lost %d",
            k + 1,
            repeat,
            run.max_sustained_events_per_s,
            run.fixed.latency_ms.p99,
            lost_in(run),
        )
        runs.append(run)
    return RepeatedStreamBench(runs=runs, worst=worst_of(runs))


def format_repeated(result: RepeatedStreamBench) -> str:
    """Each run's table, then one line per run and the worst; `result.to_json()` is the machine form."""
    blocks = [f"run {k}\n{format_bench(run)}" for k, run in enumerate(result.runs, 1)]
    share = f"p99 ms at {result.runs[0].fixed_share:.0%}" if result.runs else "p99 ms at share"
    rows = [f"{'run':<6} {'max sustained ev/s':>18} {share:>16} {'lost':>5}"]
    for k, run in enumerate(result.runs, 1):
        rows.append(f"{k:<6} {run.max_sustained_events_per_s!s:>18} {run.fixed.latency_ms.p99!s:>16} {lost_in(run):>5}")
    w = result.worst
    rows.append(f"{'worst':<6} {w.max_sustained_events_per_s!s:>18} {w.p99_ms_at_share!s:>16} {w.lost:>5}")
    return "\n\n".join([*blocks, "\n".join(rows)])
