"""`in_lanes`: a batch's chunks in flight at once, in order, bounded, and cleaned up after a failure."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.stream.scorer import in_lanes


def _jobs(delays: list[float], started: list[int], live: list[int], peak: list[int], fail_at: int | None = None):
    async def job(i: int, delay: float) -> int:
        started.append(i)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        try:
            await asyncio.sleep(delay)
            if i == fail_at:
                raise RuntimeError(f"job {i}")
            return i + 1
        finally:
            live[0] -= 1

    return [lambda i=i, d=d: job(i, d) for i, d in enumerate(delays)]


@settings(max_examples=30, deadline=None)
@given(delays=st.lists(st.sampled_from([0.0, 0.001, 0.003]), max_size=12), lanes=st.integers(1, 5))
def test_every_job_runs_once_in_order_at_most_lanes_at_a_time(delays: list[float], lanes: int) -> None:
    started, live, peak = [], [0], [0]
    total = asyncio.run(in_lanes(_jobs(delays, started, live, peak), lanes))
    assert total == sum(i + 1 for i in range(len(delays)))
    assert started == list(range(len(delays)))  # oldest-first chunks start oldest first
    assert peak[0] <= lanes and live[0] == 0
    if lanes > 1 and len(delays) > 1 and all(delays):
        assert peak[0] == min(lanes, len(delays))  # they did overlap


@pytest.mark.parametrize("lanes", [1, 3])
def test_a_failure_is_raised_and_leaves_nothing_running(lanes: int) -> None:
    started, live, peak = [], [0], [0]
    jobs = _jobs([0.01, 0.0, 0.05, 0.05, 0.05], started, live, peak, fail_at=1)

    async def go() -> None:
        with pytest.raises(RuntimeError, match="job 1"):
            await in_lanes(jobs, lanes)
        assert live[0] == 0  # cancelled and awaited before the failure surfaced

    asyncio.run(go())
    assert 4 not in started or lanes > 1  # one lane stops at the failure; more lanes may have started more
    if lanes == 1:
        assert started == [0, 1]
