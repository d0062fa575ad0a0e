"""`Lanes`: a batch's chunks in flight at once, in order, bounded, joined by later chunks while earlier
ones run, and cleaned up after a failure."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.stream.lanes import Lanes


class Jobs:
    """Jobs that record when they start, how many run at once, and what they finished."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.started: list[int] = []
        self.finished: list[int] = []
        self.live = 0
        self.peak = 0
        self.fail_at = fail_at

    def job(self, i: int, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            self.started.append(i)
            self.live += 1
            self.peak = max(self.peak, self.live)
            try:
                await asyncio.sleep(delay)
                if i == self.fail_at:
                    raise RuntimeError(f"job {i}")
                self.finished.append(i)
            finally:
                self.live -= 1

        return run


@settings(max_examples=30, deadline=None)
@given(
    rounds=st.lists(st.lists(st.sampled_from([0.0, 0.001, 0.003]), max_size=6), min_size=1, max_size=4),
    lanes=st.integers(1, 5),
)
def test_every_job_runs_once_in_order_at_most_lanes_at_a_time(rounds: list[list[float]], lanes: int) -> None:
    """Rounds are submitted as the scorer submits them: the next once every earlier job has a lane."""
    jobs = Jobs()

    async def go() -> None:
        pool = Lanes(lanes)
        i = 0
        try:
            for delays in rounds:
                for d in delays:
                    pool.submit(jobs.job(i, d))
                    i += 1
                await pool.drained()
                assert jobs.live <= lanes
            await pool.finish()
            assert pool.idle
        finally:
            await pool.close()

    asyncio.run(go())
    n = sum(len(r) for r in rounds)
    assert jobs.started == list(range(n))  # oldest-first chunks start oldest first, across rounds
    assert sorted(jobs.finished) == list(range(n))
    assert jobs.peak <= lanes and jobs.live == 0
    first = rounds[0]
    if lanes > 1 and len(first) > 1 and all(first):
        assert jobs.peak >= min(lanes, len(first))  # they did overlap


def test_drained_returns_once_the_last_job_has_a_lane_not_when_it_ends() -> None:
    jobs = Jobs()

    async def go() -> None:
        pool = Lanes(2)
        for i in range(3):
            pool.submit(jobs.job(i, 0.05))
        await pool.drained()
        assert jobs.started == [0, 1, 2] and not pool.idle  # job 2 started when job 0 ended
        await pool.one_done()
        assert len(jobs.finished) >= 1
        await pool.finish()
        assert pool.idle and sorted(jobs.finished) == [0, 1, 2]

    asyncio.run(go())


@pytest.mark.parametrize("lanes", [1, 3])
def test_a_failure_is_raised_and_close_leaves_nothing_running(lanes: int) -> None:
    jobs = Jobs(fail_at=1)

    async def go() -> None:
        pool = Lanes(lanes)
        for i, d in enumerate([0.01, 0.0, 0.05, 0.05, 0.05]):
            pool.submit(jobs.job(i, d))
        with pytest.raises(RuntimeError, match="job 1"):
            try:
                await pool.finish()
            finally:
                await pool.close()
        assert jobs.live == 0  # cancelled and awaited before the failure surfaced

    asyncio.run(go())
    if lanes == 1:
        assert jobs.started == [0, 1]


@pytest.mark.parametrize("wait", ["drained", "one_done"])
def test_a_failure_surfaces_while_waiting_for_a_lane(wait: str) -> None:
    """The scorer waits in `drained` or `one_done` before it takes more records: a failed chunk must end
    that wait, so the batch is rewound instead of taking more."""
    jobs = Jobs(fail_at=0)

    async def go() -> None:
        pool = Lanes(1)
        for i, d in enumerate([0.01, 1.0, 1.0]):
            pool.submit(jobs.job(i, d))
        try:
            with pytest.raises(RuntimeError, match="job 0"):
                await asyncio.wait_for(getattr(pool, wait)(), timeout=0.5)
        finally:
            await pool.close()
        assert jobs.live == 0

    asyncio.run(go())


def test_chunks_that_succeeded_are_forgotten() -> None:
    """A batch under a steady load may run for hours: its finished chunks must not pile up."""
    jobs = Jobs()

    async def go() -> None:
        pool = Lanes(2)
        for i in range(200):
            pool.submit(jobs.job(i, 0.0))
            if i % 10 == 9:
                await pool.drained()
        await pool.finish()
        assert not pool._tasks and pool.idle

    asyncio.run(go())
    assert sorted(jobs.finished) == list(range(200))
