"""The pure parts of `bench chaos`: the schedule, the malformed records, and the figures."""

import json
import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.bench.chaos_figures import (
    FAULTS,
    DeadLetter,
    Sent,
    Stored,
    count_lost,
    fault_counts,
    format_chaos,
    lists_by_minute,
    minutes_without_progress,
    p99,
    p99_by_minute,
    schedule,
    tally_dlq,
)
from rankstream.bench.faults import corrupt_copy
from rankstream.bench.malformed import kinds, malformed
from rankstream.bench.results import ChaosBench, FaultRecord
from rankstream.cli.main import build_parser
from rankstream.stream.artifact import load_manifest
from rankstream.stream.errors import ArtifactError
from rankstream.stream.events import Rejected, parse_event
from tests.model_builders import stand_in_artifact

CATALOG = {"22727", "85123A"}
MAX_BYTES = 16_384


def scorer_reason(value: bytes | None) -> str | None:
    """The reason the scorer gives a record: parse_event's, then its catalog check (stream/scorer.py)."""
    try:
        event = parse_event(value, MAX_BYTES, now=datetime(2026, 11, 30, tzinfo=UTC))
    except Rejected as rej:
        return rej.reason
    return None if event.item_id in CATALOG else "unknown_item"


@given(seed=st.integers(0, 2**32), n=st.integers(0, 60))
def test_every_malformed_record_is_refused_for_the_reason_it_was_made_for(seed: int, n: int) -> None:
    for record in malformed(random.Random(seed), n, "22727", MAX_BYTES):
        assert scorer_reason(record.value) == record.reason, record


def test_a_burst_holds_at_least_ten_reasons_in_equal_shares() -> None:
    burst = malformed(random.Random(0), 1000, "22727", MAX_BYTES)
    by_reason = Counter(r.reason for r in burst)
    assert len(by_reason) >= 10 and len(kinds("22727", MAX_BYTES)) >= 12
    assert "internal_error" not in by_reason
    assert len({r.key for r in burst}) == 1000
    assert min(by_reason.values()) >= 1000 // len(kinds("22727", MAX_BYTES))


def test_each_kind_alone_gives_its_reason() -> None:
    rng = random.Random(5)
    for reason, make in kinds("85123A", MAX_BYTES):
        for _ in range(20):
            assert scorer_reason(make(rng)) == reason


def test_the_schedule_is_seeded_and_holds_every_fault_in_the_faulted_window() -> None:
    counts = fault_counts(10)
    plan = schedule(600, counts, seed=3)
    assert plan == schedule(600, counts, seed=3)
    assert plan != schedule(600, counts, seed=4)
    assert Counter(p.kind for p in plan) == counts
    assert set(counts) == set(FAULTS) and counts["kill9"] >= 3
    times = [p.at_s for p in plan]
    assert times == sorted(times) and 60 <= times[0] and times[-1] <= 480
    width = 420 / len(plan)
    assert all(b - a >= width / 2 - 0.2 for a, b in zip(times, times[1:], strict=False))


@given(minutes=st.floats(0.5, 120), seed=st.integers(0, 1000))
def test_any_run_gets_every_fault_inside_it(minutes: float, seed: int) -> None:
    plan = schedule(minutes * 60, fault_counts(minutes), seed)
    assert {p.kind for p in plan} == set(FAULTS)
    assert all(0 < p.at_s < minutes * 60 * 0.8 for p in plan)


def test_an_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        schedule(60, {"meteor": 1}, 0)


def test_p99_is_nearest_rank_and_per_minute() -> None:
    assert p99([]) is None
    assert p99([5.0]) == 5.0
    assert p99([float(v) for v in range(1, 101)]) == 99.0
    samples = [(100.0 + s, float(s)) for s in range(60)] + [(100.0 + 130, 7.0)]
    assert p99_by_minute(samples, 100.0, 3) == [59.0, None, 7.0]
    assert lists_by_minute([s for s, _ in samples], 100.0, 3) == [60, 0, 1]


def test_a_minute_without_lists_counts_only_after_the_first_recovery() -> None:
    writes = [10.0, 20.0, 200.0, 250.0]  # nothing in minute 1 (60-120) or minute 2 (120-180)
    assert minutes_without_progress(writes, 0.0, first_recovery=30.0, end=250.0) == 2
    assert minutes_without_progress(writes, 0.0, first_recovery=100.0, end=250.0) == 1
    assert minutes_without_progress(writes, 0.0, first_recovery=None, end=250.0) == 0
    assert minutes_without_progress([5.0, 65.0, 125.0], 0.0, first_recovery=1.0, end=125.0) == 0


def test_lost_counts_events_beyond_the_reflected_offset_and_missing_history_items() -> None:
    sent = [Sent("a", "i1", 0, 1), Sent("a", "i2", 0, 4), Sent("a", "i3", 0, 9), Sent("b", "i1", 1, 2)]
    whole = {"a": Stored(0, 9, ("i3", "i2", "i1")), "b": Stored(1, 2, ("i1",))}
    assert count_lost(sent, whole, 50) == 0
    assert count_lost(sent, {"a": whole["a"]}, 50) == 1  # b has no list
    assert count_lost(sent, {**whole, "a": Stored(0, 4, ("i2", "i1"))}, 50) == 1  # i3 not reflected
    assert count_lost(sent, {**whole, "a": Stored(0, 9, ("i3", "i1"))}, 50) == 1  # i2 skipped
    assert count_lost(sent, {**whole, "a": Stored(0, 9, ("i3", "i2"))}, 2) == 0  # i1 beyond the history's length
    assert count_lost(sent, {**whole, "b": Stored(0, 2, ("i1",))}, 50) == 1  # another partition's offset


def test_the_dlq_tally_counts_each_source_once_and_checks_its_reason() -> None:
    bad = {(0, 1): "empty", (0, 2): "too_large", (1, 5): "invalid_json"}
    letters = [
        DeadLetter("t", 0, 1, "empty"),
        DeadLetter("t", 0, 1, "empty"),  # replayed after a kill
        DeadLetter("t", 0, 2, "invalid_json"),  # the wrong reason
        DeadLetter("t", 2, 7, "bad_state"),  # a valid event's
        DeadLetter("other", 1, 5, "invalid_json"),  # another topic's
    ]
    tally = tally_dlq(letters, "t", bad)
    assert tally.dead == 3 and tally.repeats == 1
    assert tally.by_reason == {"bad_state": 1, "empty": 1, "invalid_json": 1}
    assert tally.mismatched == 2  # (0, 2) under another reason, (1, 5) missing


@pytest.mark.parametrize("how", ["bad_checksum", "truncated_model", "lying_reference"])
def test_corrupt_copies_pass_or_fail_the_checksums_as_meant(tmp_path, how: str) -> None:  # type: ignore[no-untyped-def]
    good = stand_in_artifact(tmp_path / "src", "v1", ["distil"])
    bad = corrupt_copy(good, tmp_path / "out", f"v1-{how}", how)  # type: ignore[arg-type]
    if how == "bad_checksum":
        with pytest.raises(ArtifactError, match="does not match its sha256"):
            load_manifest(bad)
    else:
        assert load_manifest(bad).version == f"v1-{how}"
    assert load_manifest(good).version == "v1"


def test_the_report_holds_the_figures_the_issue_asks_for() -> None:
    faults = dict.fromkeys(FAULTS, 1)
    log = [FaultRecord("kill9", 12.0, 5.5, "chaos-0 killed, chaos-0.1 ready")]
    result = ChaosBench(10.2, 150.0, 2, 0, 90_000, 4000, 4000, 0, 0, 1000, 1000, {"empty": 1000}, 3, 0, 0, faults,
                        [120.5, None], [900, 0], 0, 17.5, 0.4, log)  # fmt: skip
    data = json.loads(result.to_json())
    for key in ("minutes", "events", "lost", "not_reflected", "bad_records", "dlq", "dlq_by_reason", "faults"):
        assert key in data
    assert data["p99_ms_by_minute"] == [120.5, None] and data["minutes_without_progress_after_recovery"] == 0
    assert set(data["faults"]) >= {"kill9", "broker_restart", "redis_failover", "redis_stall", "corrupt_publish"}
    assert data["fault_log"][0]["kind"] == "kill9"
    text = format_chaos(result)
    assert "lost 0" in text and "empty 1000" in text and "120.5" in text


def test_the_command_defaults_to_ten_minutes_and_needs_a_rate() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "chaos", "--rate", "150"])
    assert (args.minutes, args.rate, args.replicas, args.seed, args.json) == (10.0, 150.0, 2, 0, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "chaos"])
