"""`/metrics`, `/healthz` and `/readyz` on one port (RANKSTREAM_METRICS_PORT), for Prometheus and probes.

- `/healthz` (liveness): the scorer's loop made progress within `RANKSTREAM_LIVENESS_S`. A loop stuck
  in a batch (a hung model call, a deadlock) fails it, and the orchestrator restarts the replica; a
  scorer backing off while Redis is away is still live.
- `/readyz` (readiness): the model is loaded and verified, the replica owns partitions, Redis answers
  and the last batch did not fail. A replica backing off is live but not ready.

Both answer `200 ok` or `503 <what is wrong>` as plain text. The server runs on the scorer's event
loop: a few lines of HTTP, no framework, nothing to install.
"""

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

_PING_TIMEOUT_S = 1.0


@dataclass
class Probe:
    """What the probes read; the scorer loop and the service keep it current."""

    liveness_s: float
    started: bool = False  # model loaded and verified, clients started
    progress_at: float = 0.0  # time.monotonic() of the loop's last turn
    failing: str = ""  # why the last batch failed, until one succeeds
    assigned: Callable[[], int] = lambda: 0  # partitions owned now
    ping: Callable[[], Awaitable[None]] | None = None  # raises when Redis does not answer

    def progressed(self) -> None:
        self.progress_at = time.monotonic()

    def live(self) -> str:
        """'' when live, else why not."""
        if not self.started:
            return ""  # loading a model is progress too; readiness says it is not serving yet
        idle = time.monotonic() - self.progress_at
        return f"no progress for {idle:.0f}s" if idle > self.liveness_s else ""

    async def ready(self) -> str:
        """'' when ready, else why not."""
        if not self.started:
            return "model not loaded yet"
        if self.failing:
            return f"backing off: {self.failing}"
        if not self.assigned():
            return "no partitions assigned"
        if self.ping is not None:
            try:
                async with asyncio.timeout(_PING_TIMEOUT_S):
                    await self.ping()
            except Exception as exc:  # noqa: BLE001 - any failure to answer means not ready
                return f"Redis does not answer: {exc}"
        return ""


class HealthServer:
    """Serves the three paths on `port` until `stop()`."""

    def __init__(self, probe: Probe, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - probes come from outside
        self._probe = probe
        self._port = port
        self._host = host
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("serving /metrics, /healthz and /readyz on port %d", self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing here needs them
            path = request.split()[1].decode() if len(request.split()) > 1 else ""
            status, body, kind = await self._answer(path.split("?")[0])
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass  # a client that went away or spoke no HTTP
        finally:
            writer.close()

    async def _answer(self, path: str) -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", generate_latest(), CONTENT_TYPE_LATEST
        if path == "/healthz":
            why = self._probe.live()
        elif path == "/readyz":
            why = await self._probe.ready()
        else:
            return "404 Not Found", b"not found: /metrics, /healthz, /readyz\n", "text/plain"
        if why:
            return "503 Service Unavailable", f"{why}\n".encode(), "text/plain"
        return "200 OK", b"ok\n", "text/plain"


class Job(Protocol):
    """A consumer-group job (`rankstream tables`, `rankstream catalog serve`) as `run_job` drives it."""

    probe: Probe

    def stop(self) -> None: ...
    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def close(self) -> None: ...


async def run_job(job: Job, port: int | None, close: Callable[[], Awaitable[None]]) -> None:
    """Run `job` until SIGTERM/SIGINT, its probes on `port` (none if unset); then close it, and `close`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, job.stop)
    health = HealthServer(job.probe, port) if port else None
    try:
        if health is not None:
            await health.start()
        await job.start()
        await job.run()
    finally:
        await job.close()
        if health is not None:
            await health.stop()
        await close()
