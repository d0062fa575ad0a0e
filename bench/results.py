"""What `bench stream` and `bench swap` measure, as typed records; `Record.to_json` is their one JSON form.

Field names and order are the JSON keys that docs/results.md and the people comparing runs read, so a
renamed field is a changed output.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Record:
    """A benchmark result: its JSON is the dataclass's fields, nested records as objects."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class Latency(Record):
    """Event -> Redis latency percentiles (ms); None where too few events were scored to tell."""

    p50: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class Percentiles(Record):
    """p50 and p99 (ms); None where too few events were measured to tell."""

    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class LatencySplit(Record):
    """Event -> Redis latency in two parts: from the Kafka record time to its chunk starting to score
    (queue, batch formation, reads) and from there to its list written (scoring + write); `tail_*`: the
    mean of each part over the events at or above the p99 of the whole, which says what the p99 is made of.
    """

    events: int
    waiting: Percentiles
    scoring: Percentiles
    tail_waiting_mean: float | None
    tail_scoring_mean: float | None


@dataclass(frozen=True)
class CpuUse(Record):
    """The CPU over a phase (`bench.machine`), as shares of all `cores`' time: running anything (`busy`:
    the broker, Redis, the producer and the scorer together on one machine), taken by the hypervisor for
    other guests (`steal`), and used by the benchmark's own process (`this_process`: the scorer in
    `bench stream`). None where the machine does not say (no /proc/stat)."""

    cores: int
    busy: float | None
    steal: float | None
    this_process: float | None

    def brief(self) -> str:
        """`busy/steal/this_process`, as the benchmarks' tables print it."""
        return f"{self.busy}/{self.steal}/{self.this_process}"


@dataclass(frozen=True)
class BatchTimes(Record):
    """The scorer's batches in a phase: how long each poll waited for records, how long each batch took
    to process (read, score, write; its commit overlaps the next), and how many records each held. An
    event that arrives while a batch is processed waits for the rest of it, then for its own batch."""

    batches: int
    poll_ms: Percentiles
    process_ms: Percentiles
    records: Percentiles


@dataclass(frozen=True)
class Phase(Record):
    """One phase of `bench stream`: a fixed set of events at one target rate (None: a backlog)."""

    events: int
    rate_target: float | None
    seconds: float
    events_per_s: float
    pairs_per_s: float
    scorings: int
    coalesced: int
    dlq: int
    lost: int
    users_not_reflected: int
    latency_ms: Latency
    drained_s_after_last_send: float | None
    kept_up: bool
    stage_s: dict[str, float]
    latency_split_ms: LatencySplit
    # Text retrieval per scored user (ms), with RANKSTREAM_TEXT_CANDIDATES on; None otherwise.
    retrieve_ms: Percentiles | None = None
    cpu: CpuUse | None = None
    batches: BatchTimes | None = None


@dataclass(frozen=True)
class BatchShape(Record):
    max_records: int
    linger_ms: int


@dataclass(frozen=True)
class StreamBench(Record):
    """`bench stream`: the scorer's settings, the backlog phase, the ladder of live rates, the fixed rate."""

    model_version: str
    model_dir: str
    method_chain: list[str]
    candidates_per_user: int
    batch: BatchShape
    score_chunk_users: int
    rerank_top: int | None
    user_quiet_ms: int
    live_events: int
    threads: int
    max: Phase
    ladder: list[Phase]
    max_sustained_events_per_s: float | None
    fixed_share: float
    fixed: Phase
    tables_job: bool = False  # a `rankstream tables` replica ran beside the scorer in every phase
    shadow: "ShadowCost | None" = None  # with --shadow: the fixed rate again with a shadow version on
    score_lanes: int = 1  # model calls in flight (RANKSTREAM_SCORE_LANES), each of `threads` threads


@dataclass(frozen=True)
class ShadowCost(Record):
    """The fixed rate with a shadow version scoring `sample` of users, between two phases without one
    (same rate, same events): its p99 over the mean of theirs, and how many users it scored or skipped."""

    sample: float
    with_shadow: Phase
    without_after: Phase
    p99_ratio: float | None
    shadow_scored_users: int
    shadow_skipped_users: int


@dataclass(frozen=True)
class Worst(Record):
    """The worst of repeated `bench stream` runs, each figure from whichever run was worst at it."""

    max_sustained_events_per_s: float | None
    p99_ms_at_share: float | None
    lost: int


@dataclass(frozen=True)
class RepeatedStreamBench(Record):
    """`bench stream --repeat N`: every run as `bench stream` reports it, and the worst of them."""

    runs: list[StreamBench]
    worst: Worst


@dataclass(frozen=True)
class BySwap(Record, Generic[T]):
    """One figure measured in steady state and inside swap windows."""

    steady: T
    swap_windows: T


@dataclass(frozen=True)
class Rss(Record):
    """RSS (MiB) of the largest replica process: at start, after the first and the last swap, and after
    each one."""

    start: float
    after_first_swap: float | None
    after_last_swap: float
    after_each_swap: list[float]


@dataclass(frozen=True)
class Convergence(Record):
    """Seconds from a promote to every replica serving the promoted version."""

    max: float | None
    median: float | None


@dataclass(frozen=True)
class LadderStep(Record):
    """One rate of `bench swap`'s ladder: `events` produced at `rate`, the p99 event -> Redis latency (ms)
    of the lists seen in Redis during the step, whether the fleet kept up, when the lag was gone and how
    many lists the p99 is over."""

    rate: float
    p99_ms: float | None
    kept_up: bool
    events: int
    drained_s_after_last_send: float
    lists: int


@dataclass(frozen=True)
class SwapBench(Record):
    """`bench swap`: replica processes under steady load while the active version flips. Latency is per
    list seen in Redis during the swap phase, from the newest event it reflects; `lists_by_version`: those
    lists by the version that wrote them. `events`: produced in the swap phase; `ladder_events`: produced
    by the ladder before it (0 with a given rate). `lost` and `events_by_version` come from the replicas'
    totals, which cover both. `max_sustained_events_per_s` and `share`: the ladder's highest rate kept up
    and the share of it the swaps ran at (None with a given rate). `swap_phase`: the swap phase judged as
    a ladder step is (lag gone within 2 s of its last send, p99 of its lists at most 1 s); a phase not
    kept up fell behind, and its steady / swap-window ratio compares two backlogs."""

    versions: list[str]
    replicas: int
    rate: float
    swaps: int
    every_s: float
    events: int
    lost: int
    users_not_reflected: int
    events_by_version: dict[str, int]
    latency_p99_ms: BySwap[float | None]
    latency_samples: BySwap[int]
    rss_mib: Rss
    publish_to_all_serving_s: Convergence
    lists_by_version: dict[str, int]
    ladder: list[LadderStep] = field(default_factory=list)
    max_sustained_events_per_s: float | None = None
    share: float | None = None
    ladder_events: int = 0
    swap_phase: LadderStep | None = None


@dataclass(frozen=True)
class FaultRecord(Record):
    """One fault of `bench chaos`: when it began (s after the load started), how long until it was
    injected and recovered from, and what it did."""

    kind: str
    at_s: float
    recovered_s: float
    detail: str


@dataclass(frozen=True)
class ChaosBench(Record):
    """`bench chaos`: replica processes under a steady load through scheduled faults. `events`: valid
    events produced; `lost`, `not_reflected`: against the reference of what was produced (bench/chaos.py);
    `dlq`: distinct source records dead-lettered, `dlq_by_reason` of those; `dlq_repeats`: letters for a
    source already dead-lettered (a replay after a kill); `dlq_mismatched`: bad records missing from the
    DLQ or under another reason; `corrupt_served`: replicas that served a corrupt artifact;
    `p99_ms_by_minute`: event -> Redis latency of the lists seen in Redis, by minute of the run."""

    minutes: float
    rate: float
    replicas: int
    seed: int
    events: int
    users: int
    users_reflected: int
    lost: int
    not_reflected: int
    bad_records: int
    dlq: int
    dlq_by_reason: dict[str, int]
    dlq_repeats: int
    dlq_mismatched: int
    corrupt_served: int
    faults: dict[str, int]
    p99_ms_by_minute: list[float | None]
    lists_by_minute: list[int]
    minutes_without_progress_after_recovery: int
    first_recovery_s: float | None
    caught_up_s: float | None
    fault_log: list[FaultRecord]
