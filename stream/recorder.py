"""What a scorer counts, in one place: every counter goes to its `Stats` and to Prometheus together."""

import contextlib
import dataclasses
import json
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rankstream.stream import metrics as m


class Outcome(NamedTuple):
    """One event checked against the list its user had on screen (benchmarks keep these)."""

    user_id: str
    rank: int  # the event's item's place in that list, -1 if not in it
    partition: int
    offset: int  # the event's
    shown_offset: int | None  # the event that list reflects (same partition)


@dataclass
class Stats:
    """A scorer's totals since start, returned by `Scorer.run` (benchmarks and tests read them)."""

    events: int = 0
    dlq: int = 0
    lists_written: int = 0
    stale_skipped: int = 0
    coalesced: int = 0
    batches: int = 0
    pairs: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    events_by_version: dict[str, int] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall time per batch stage, summed

    def to_json(self) -> str:
        """The one line `rankstream serve` prints when it stops, read back by `from_json` (the demo)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> "Stats":
        return cls(**json.loads(line))


class Recorder:
    """Feeds `Stats` and the Prometheus metrics from the same calls, so the two never disagree."""

    def __init__(self, latency_samples: int = 0) -> None:
        self.stats = Stats()
        # (written at, unix s; event -> Redis latency, ms) of the most recent events, for benchmarks;
        # bounded. A served replica keeps none (the histogram metric has the latencies).
        self.latencies: deque[tuple[float, float]] = deque(maxlen=latency_samples)
        # (waiting, scoring + write; ms) of the same events, when the scorer marks its chunks
        # (`chunk_started`): whether a slow event waited in the queue or in its chunk's model call.
        self.latency_parts: deque[tuple[float, float]] = deque(maxlen=latency_samples)
        self._chunk_started_ms: float | None = None
        # (user, rank of the event's item in the list on screen, -1 if absent) of the most recent events
        # checked for the live hit-rate, for the streaming quality benchmark.
        self.outcomes: deque[Outcome] = deque(maxlen=latency_samples)
        # Text retrieval per user (ms; mean of its chunk), for the benchmark's per-stage figures.
        self.retrieve_ms: deque[float] = deque(maxlen=latency_samples)
        # (waited for records, processed; ms; records) of the most recent batches: how long the queue
        # behind a batch grows while it is processed, for the benchmark's figures.
        self.batch_times: deque[tuple[float, float, int]] = deque(maxlen=latency_samples)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of a batch (read, score, write, commit)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            m.STAGE_SECONDS.labels(name).observe(took)
            self.stats.stage_s[name] = self.stats.stage_s.get(name, 0.0) + took

    def retrieved(self, seconds: float, users: int) -> None:
        """Time a chunk spent finding its users' text neighbours (inside its scoring stage)."""
        if not users:
            return
        m.STAGE_SECONDS.labels("retrieve").observe(seconds)
        self.stats.stage_s["retrieve"] = self.stats.stage_s.get("retrieve", 0.0) + seconds
        if self.retrieve_ms.maxlen:
            self.retrieve_ms.extend([seconds * 1000 / users] * users)

    def dead_letter(self, reason: str) -> None:
        st = self.stats
        st.dlq += 1
        st.dlq_reasons[reason] = st.dlq_reasons.get(reason, 0) + 1
        m.DLQ.labels(reason).inc()

    def written(self, lists: int, stale: int, pairs: int, quality: dict[str, tuple[int, int]]) -> None:
        """One chunk's writes: lists applied, lists the fence refused, pairs scored, live hit-rate."""
        for version, (checked, hits) in quality.items():
            m.LIVE_EVENTS.labels(version).inc(checked)
            m.LIVE_HITS.labels(version).inc(hits)
        m.LISTS_WRITTEN.inc(lists)
        m.STALE_SKIPPED.inc(stale)
        m.PAIRS.inc(pairs)
        st = self.stats
        st.lists_written += lists
        st.stale_skipped += stale
        st.pairs += pairs

    def batch(self, events_by_version: Mapping[str, int], records: int, coalesced: int) -> None:
        """One batch: records taken, events it finished per version (scored or already reflected), events folded."""
        events = sum(events_by_version.values())
        m.BATCH_RECORDS.observe(records)
        m.EVENTS.inc(events)
        m.COALESCED.inc(coalesced)
        st = self.stats
        st.batches += 1
        st.events += events
        st.coalesced += coalesced
        for version, n in events_by_version.items():
            if n:
                st.events_by_version[version] = st.events_by_version.get(version, 0) + n

    def batch_timed(self, poll_s: float, process_s: float, records: int) -> None:
        """One batch's poll (waiting for records included) and processing, in seconds (benchmarks)."""
        if self.batch_times.maxlen:
            self.batch_times.append((poll_s * 1000, process_s * 1000, records))

    def chunk_started(self) -> float:
        """The chunk about to be scored starts now: the next `reflected` splits its events' latency here.
        Returns the mark, for a caller with several chunks in flight to pass to `reflected` itself."""
        self._chunk_started_ms = time.time() * 1000
        return self._chunk_started_ms

    def reflected(self, timestamps_ms: Sequence[int], started_ms: float | None = None) -> None:
        """Event -> Redis latency of events whose lists are written now; split at `started_ms`, else at the
        last `chunk_started` mark."""
        written_ms = time.time() * 1000
        # One mark per chunk: events reflected without a chunk of their own (a replay) get no split.
        mark, self._chunk_started_ms = self._chunk_started_ms, None
        started_ms = mark if started_ms is None else started_ms
        for ts in timestamps_ms:
            latency_ms = max(written_ms - ts, 0.0)
            m.EVENT_TO_REDIS.observe(latency_ms / 1000)
            self.latencies.append((written_ms / 1000, latency_ms))
            if started_ms is not None:
                self.latency_parts.append(split_at(ts, started_ms, written_ms))

    def failed_batch(self, exc: Exception) -> None:
        m.ERRORS.labels(type(exc).__name__).inc()
        self._chunk_started_ms = None  # the chunk never reached its write


def split_at(event_ms: float, started_ms: float, written_ms: float) -> tuple[float, float]:
    """(waiting, scoring + write) in ms of an event whose chunk started scoring at `started_ms`."""
    waiting = min(max(started_ms - event_ms, 0.0), max(written_ms - event_ms, 0.0))
    return waiting, max(written_ms - event_ms, 0.0) - waiting
