"""Benchmark records with the figures a test cares about and plausible values elsewhere."""

from rankstream.bench.latency import latency_split
from rankstream.bench.results import BatchShape, Latency, Phase, StreamBench


def phase(rate: float | None, *, p99: float | None = 2.0, lost: int = 0) -> Phase:
    return Phase(
        10,
        rate,
        1.0,
        10.0,
        500.0,
        8,
        2,
        0,
        lost,
        0,
        Latency(1.0, p99, 3.0),
        None,
        False,
        {"score": 0.5},
        latency_split([]),
    )


def stream_bench(
    sustained: float | None = 5.0, *, p99_at_share: float | None = 2.0, lost: tuple[int, int, int] = (0, 0, 0)
) -> StreamBench:
    """A run whose backlog, one ladder step and fixed phase lost `lost` events."""
    return StreamBench(
        "v1",
        "/m",
        ["distil"],
        50,
        BatchShape(64, 5),
        2,
        None,
        0,
        10,
        2,
        phase(None, lost=lost[0]),
        [phase(5.0, lost=lost[1])],
        sustained,
        0.8,
        phase(4.0, p99=p99_at_share, lost=lost[2]),
    )
