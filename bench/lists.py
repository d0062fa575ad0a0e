"""Event -> Redis latency of replicas in other processes, read where frontends read it: the lists.

Each `rec:{user}` document carries the Kafka record time of the newest event it reflects (`event_ts`),
when it was written (`generated_at`) and the version that wrote it (`model_version`): one sample per
list. Polling sees the last list of each user per poll; a list overwritten between two polls is missed,
which thins the samples but biases none of them (each is timed by the writer, not by the poll).
"""

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from rankstream.stream.redis_client import RedisClient
from rankstream.stream.store import rec_key

_MGET_KEYS = 500


@dataclass(frozen=True)
class ListSample:
    """One list seen in Redis: written at (unix s), event -> Redis latency (ms), the version that wrote it."""

    written_at: float
    latency_ms: float
    version: str


def sample_of(doc: dict[str, object]) -> ListSample:
    """The sample a `rec:{user}` document gives (stream/store.py `_rec_doc`)."""
    written = float(doc["generated_at"])  # type: ignore[arg-type]
    event_ms = float(doc["event_ts"])  # type: ignore[arg-type]
    return ListSample(written, max(written * 1000 - event_ms, 0.0), str(doc["model_version"]))


def split_by_windows(
    samples: Sequence[ListSample], windows: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of lists written outside every window, and of those written inside one."""
    steady: list[float] = []
    inside: list[float] = []
    for s in samples:
        (inside if any(a <= s.written_at <= b for a, b in windows) else steady).append(s.latency_ms)
    return steady, inside


@dataclass
class ListWatch:
    """Polls the lists of `users` and keeps one sample per new write seen."""

    client: RedisClient
    users: list[str]
    poll_s: float = 0.1
    samples: list[ListSample] = field(default_factory=list)
    _seen: dict[str, tuple[object, object, object]] = field(default_factory=dict)

    async def poll(self) -> None:
        for i in range(0, len(self.users), _MGET_KEYS):
            users = self.users[i : i + _MGET_KEYS]
            raw = await self.client.mget([rec_key(u) for u in users])
            for user, doc in zip(users, raw, strict=True):
                if doc:
                    self._take(user, json.loads(doc))

    def _take(self, user: str, doc: dict[str, object]) -> None:
        at = (doc.get("partition"), doc.get("offset"), doc.get("generated_at"))
        if self._seen.get(user) != at:
            self._seen[user] = at
            self.samples.append(sample_of(doc))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, then once more for the last writes."""
        while not stop.is_set():
            await self.poll()
            try:
                await asyncio.wait_for(stop.wait(), self.poll_s)
            except TimeoutError:
                pass
        await self.poll()
