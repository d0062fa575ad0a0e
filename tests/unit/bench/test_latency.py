"""The waiting / scoring split of event -> Redis latency, from the recorder's mark to the report."""

import pytest

from rankstream.bench.latency import batch_times, latency_split, percentile
from rankstream.stream.recorder import Recorder, split_at


def test_split_at_the_chunk_start_adds_up_to_the_whole() -> None:
    assert split_at(event_ms=1_000, started_ms=1_030, written_ms=1_045) == (30.0, 15.0)


def test_split_never_goes_negative_on_a_skewed_clock() -> None:
    assert split_at(event_ms=1_050, started_ms=1_030, written_ms=1_060) == (0.0, 10.0)
    assert split_at(event_ms=1_100, started_ms=1_030, written_ms=1_060) == (0.0, 0.0)


def test_recorder_splits_only_events_of_a_marked_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    now = iter([100.0, 100.05, 100.2])  # chunk_started, then two reflected calls (unix s)
    monkeypatch.setattr("rankstream.stream.recorder.time.time", lambda: next(now))
    rec = Recorder(latency_samples=10)
    rec.chunk_started()
    rec.reflected([99_990, 99_980])
    rec.reflected([100_100])  # a replayed event: no chunk of its own
    assert [round(ms) for _, ms in rec.latencies] == [60, 70, 100]
    assert [tuple(round(x) for x in p) for p in rec.latency_parts] == [(10, 50), (20, 50)]


def test_a_replica_keeps_no_samples() -> None:
    rec = Recorder()
    rec.chunk_started()
    rec.reflected([0])
    rec.batch_timed(0.01, 0.02, 5)
    assert not rec.latencies and not rec.latency_parts and not rec.batch_times


def test_batch_times_in_ms_and_their_percentiles() -> None:
    rec = Recorder(latency_samples=100)
    for i in range(20):
        rec.batch_timed(poll_s=0.002, process_s=0.05 if i else 0.4, records=100 + i)
    times = batch_times(rec.batch_times)
    assert times.batches == 20
    assert (times.poll_ms.p50, times.process_ms.p50, times.records.p50) == (2.0, 50.0, 109.5)
    assert 50.0 < times.process_ms.p99 <= 400.0  # towards the one slow batch, never beyond it
    assert batch_times([(1.0, 1.0, 1)] * 9).process_ms.p50 is None  # too few batches to tell


def test_latency_split_percentiles_and_tail() -> None:
    # 198 events that waited 10 ms and scored in 5, and 2 that waited 500 ms: the tail is queueing.
    parts = [(10.0, 5.0)] * 198 + [(500.0, 6.0)] * 2
    split = latency_split(parts)
    assert split.events == 200
    assert (split.waiting.p50, split.scoring.p50) == (10.0, 5.0)
    assert split.waiting.p99 == percentile([w for w, _ in parts], 99)
    assert split.tail_waiting_mean is not None and split.tail_waiting_mean > 100
    assert split.tail_scoring_mean is not None and split.tail_scoring_mean < 10


def test_latency_split_of_too_few_events_says_so() -> None:
    split = latency_split([(1.0, 1.0)] * 50)
    assert (split.waiting.p99, split.scoring.p50, split.tail_waiting_mean) == (None, None, None)
    assert split.events == 50
