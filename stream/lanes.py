"""A batch's chunks in flight: at most `lanes` at once, started in the order submitted.

Chunks may be submitted while earlier ones run, so the scorer can add the users who clicked since to a
batch as soon as no chunk waits for a lane, instead of leaving a lane idle until the whole batch is
written. The first failure stops the batch: `close` cancels what is still queued or running and waits
for it, so no chunk of a failed batch still reads or writes when the batch is retried (a model call
already running in a worker thread finishes there and its scores are dropped; list writes are fenced
by offset anyway). A batch under a steady load may run for hours: a chunk that finished is forgotten.
"""

import asyncio
from collections.abc import Awaitable, Callable


class Lanes:
    def __init__(self, lanes: int) -> None:
        self.lanes = max(lanes, 1)
        self._gate = asyncio.Semaphore(self.lanes)
        self.running = 0
        self._queued = 0
        self._submitted = 0
        self._tasks: dict[int, asyncio.Task[None]] = {}  # by submission number, until they succeed
        self._failures: dict[int, BaseException] = {}
        self._drained = asyncio.Event()
        self._drained.set()

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        self._queued += 1
        self._drained.clear()
        n = self._submitted
        self._submitted += 1
        task = asyncio.create_task(self._run(n, job))
        self._tasks[n] = task
        task.add_done_callback(lambda t, n=n: self._done(n, t))

    async def _run(self, n: int, job: Callable[[], Awaitable[None]]) -> None:
        async with self._gate:
            self._queued -= 1
            if not self._queued:
                self._drained.set()
            if self._failures:  # a chunk queued behind a failure never starts
                return
            self.running += 1
            try:
                await job()
            except Exception as exc:  # noqa: BLE001 - any failure is the batch's, raised by the waiter
                # Recorded before the lane is released, so the chunk that takes it sees the failure.
                self._failures[n] = exc
                self._drained.set()  # wake a caller waiting for a lane: the batch has failed
            finally:
                self.running -= 1

    def _done(self, n: int, task: "asyncio.Task[None]") -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:  # not an Exception (those are recorded in `_run`)
            self._failures.setdefault(n, exc)
            self._drained.set()
        elif n not in self._failures:
            del self._tasks[n]

    @property
    def free(self) -> int:
        """Lanes no chunk holds or waits for."""
        return max(self.lanes - self.running - self._queued, 0)

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return all(t.done() for t in self._tasks.values())

    async def drained(self) -> None:
        """Until every chunk submitted has a lane; raises the first failure, if one came meanwhile."""
        await self._drained.wait()
        self._raise_failure()

    async def one_done(self) -> None:
        """Until one more chunk finishes (at once if none runs); raises the first failure."""
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        self._raise_failure()

    async def finish(self) -> None:
        """Until every chunk has finished; raises the first failure (in the order submitted, of those
        that failed by then) as soon as one comes."""
        while not self.idle:
            await self.one_done()  # raises as soon as one fails
        self._raise_failure()

    async def close(self) -> None:
        """Cancel what is queued or running and wait for it (a no-op after `finish`)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _raise_failure(self) -> None:
        if self._failures:
            raise self._failures[min(self._failures)]
