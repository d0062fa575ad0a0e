"""`CommitPipeline.raise_failed`: a finished commit's failure surfaces; one still running is not waited for."""

import asyncio

import pytest

from rankstream.stream.commits import CommitPipeline
from rankstream.stream.recorder import Recorder


class _Consumer:
    def assignment(self) -> set:  # type: ignore[type-arg]
        return set()


def test_a_finished_failed_commit_is_raised_and_a_running_one_is_not_waited_for() -> None:
    release = asyncio.Event()

    async def hangs(offsets) -> None:  # type: ignore[no-untyped-def]
        await release.wait()  # the broker is away

    async def fails(offsets) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("commit refused")

    async def go() -> None:
        running = CommitPipeline(_Consumer(), Recorder(), hangs)  # type: ignore[arg-type]
        await running.start({"tp": 1})  # type: ignore[dict-item]
        await asyncio.sleep(0)
        running.raise_failed()  # returns at once: the commit is still in flight
        release.set()
        await running.wait()

        failing = CommitPipeline(_Consumer(), Recorder(), fails)  # type: ignore[arg-type]
        await failing.start({"tp": 1})  # type: ignore[dict-item]
        failing.raise_failed()  # not finished yet: nothing to raise
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="commit refused"):
            failing.raise_failed()
        failing.raise_failed()  # raised once; the pipeline is clear again

    asyncio.run(asyncio.wait_for(go(), timeout=5))
