"""The demo's scoring count: records the scorer committed since the replay began, up to the total."""

import asyncio
from collections.abc import Awaitable, Callable

from rankstream.ops.progress import Reading, follow, scored


def test_scored_counts_from_the_start_and_stays_in_range() -> None:
    assert scored(start=100, committed=100, total=50) == 0
    assert scored(start=100, committed=130, total=50) == 30
    assert scored(start=100, committed=190, total=50) == 50
    assert scored(start=100, committed=90, total=50) == 0  # a reading from before the start


def _reader(readings: list[Reading], sending: asyncio.Future[int], sent_after: int) -> Callable[[], Awaitable[Reading]]:
    """Hand out `readings` in turn; the replay finishes once `sent_after` of them were read."""
    calls = 0

    async def read() -> Reading:
        nonlocal calls
        calls += 1
        if calls == sent_after and not sending.done():
            sending.set_result(8)
        return readings[min(calls, len(readings)) - 1]

    return read


async def test_the_count_moves_while_scoring_goes_on_and_ends_at_the_total() -> None:
    sending: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    # (committed, lag): a backlog of 2 at start 10, then 8 records sent while the scorer commits.
    readings = [(11, 4), (13, 0), (12, 6), (16, 2), (20, 0)]
    read = _reader(readings, sending, sent_after=2)
    seen = [r async for r in follow(read, sending, start=10, total=10, poll_s=0)]
    # A lag of 0 while records are still being sent is not the end; a stale reading never counts back.
    assert seen == [(1, 4), (3, 0), (3, 6), (6, 2), (10, 0)]


async def test_a_replay_the_scorer_already_finished_ends_at_once_at_the_total() -> None:
    sending: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    sending.set_result(5)

    async def read() -> Reading:
        return 25, 0

    assert [r async for r in follow(read, sending, start=20, total=5, poll_s=0)] == [(5, 0)]
