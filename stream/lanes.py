"""A batch's chunks in flight: at most `lanes` at once, started in the order submitted.

Chunks may be submitted while earlier ones run, so the scorer can add the users who clicked since to a
batch as soon as no chunk waits for a lane, instead of leaving a lane idle until the whole batch is
written. The first failure stops the batch: `close` cancels what is still queued or running and waits
for it, so no chunk of a failed batch still reads or writes when the batch is retried (a model call
already running in a worker thread finishes there and its scores are dropped; list writes are fenced
by offset anyway).
"""

import asyncio
from collections.abc import Awaitable, Callable


class Lanes:
    def __init__(self, lanes: int) -> None:
        self.lanes = max(lanes, 1)
        self._gate = asyncio.Semaphore(self.lanes)
        self.running = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._queued = 0
        self._failed = False
        self._drained = asyncio.Event()
        self._drained.set()

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        self._queued += 1
        self._drained.clear()
        self._tasks.append(asyncio.create_task(self._run(job)))

    async def _run(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            async with self._gate:
                self._started_one()
                if not self._failed:  # a chunk queued behind a failure never starts
                    self.running += 1
                    try:
                        await job()
                    finally:
                        self.running -= 1
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._failed = True
            self._drained.set()  # wake a caller waiting for a lane: the batch has failed
            raise

    def _started_one(self) -> None:
        self._queued -= 1
        if not self._queued:
            self._drained.set()

    @property
    def free(self) -> int:
        """Lanes no chunk holds or waits for."""
        return max(self.lanes - self.running - self._queued, 0)

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return all(t.done() for t in self._tasks)

    async def drained(self) -> None:
        """Until every chunk submitted has a lane; raises the first failure, if one came meanwhile."""
        await self._drained.wait()
        self._raise_failure()

    async def one_done(self) -> None:
        """Until one more chunk finishes (at once if none runs); raises the first failure."""
        running = [t for t in self._tasks if not t.done()]
        if running:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        self._raise_failure()

    async def finish(self) -> None:
        """Until every chunk has finished; raises the first failure in the order submitted."""
        for task in self._tasks:
            await task

    async def close(self) -> None:
        """Cancel what is queued or running and wait for it (a no-op after `finish`)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _raise_failure(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
