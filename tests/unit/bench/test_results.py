"""The benchmarks' JSON keys are read by people and docs: the typed records must keep them."""

import json

from rankstream.bench.results import BySwap, Convergence, Rss, SwapBench
from tests.unit.bench.builders import stream_bench


def test_stream_bench_json_keeps_its_keys() -> None:
    doc = json.loads(stream_bench(None).to_json())
    assert list(doc) == [
        "model_version",
        "model_dir",
        "method_chain",
        "candidates_per_user",
        "batch",
        "score_chunk_users",
        "rerank_top",
        "user_quiet_ms",
        "live_events",
        "threads",
        "max",
        "ladder",
        "max_sustained_events_per_s",
        "fixed_share",
        "fixed",
        "tables_job",
        "shadow",
        "score_lanes",
    ]
    assert doc["batch"] == {"max_records": 64, "linger_ms": 5}
    assert list(doc["ladder"][0]) == [
        "events",
        "rate_target",
        "seconds",
        "events_per_s",
        "pairs_per_s",
        "scorings",
        "coalesced",
        "dlq",
        "lost",
        "users_not_reflected",
        "latency_ms",
        "drained_s_after_last_send",
        "kept_up",
        "stage_s",
        "latency_split_ms",  # added after the others: the keys before it are unchanged
        "retrieve_ms",  # None unless text retrieval is on
        "cpu",  # the machine's CPU over the phase (bench.machine); None where not measured
        "batches",  # the scorer's batches: poll, processing and records (bench.latency.batch_times)
    ]
    assert doc["max"]["retrieve_ms"] is None
    assert doc["max"]["cpu"] is None
    assert doc["max"]["latency_ms"] == {"p50": 1.0, "p99": 2.0, "max": 3.0}
    assert doc["max"]["latency_split_ms"] == {
        "events": 0,
        "waiting": {"p50": None, "p99": None},
        "scoring": {"p50": None, "p99": None},
        "tail_waiting_mean": None,
        "tail_scoring_mean": None,
    }


def test_swap_bench_json_keeps_its_keys() -> None:
    result = SwapBench(
        ["a", "b"],
        2,
        40.0,
        1,
        30.0,
        100,
        0,
        0,
        {"a": 60, "b": 40},
        BySwap(12.5, None),
        BySwap(90, 10),
        Rss(300.0, 310.0, 310.0, [310.0]),
        Convergence(1.2, 1.2),
        {"a": 50, "b": 30},
    )
    doc = json.loads(result.to_json())
    assert list(doc) == [
        "versions",
        "replicas",
        "rate",
        "swaps",
        "every_s",
        "events",
        "lost",
        "users_not_reflected",
        "events_by_version",
        "latency_p99_ms",
        "latency_samples",
        "rss_mib",
        "publish_to_all_serving_s",
        "lists_by_version",
        "ladder",
        "max_sustained_events_per_s",
        "share",
        "ladder_events",
        "swap_phase",
    ]
    assert doc["latency_p99_ms"] == {"steady": 12.5, "swap_windows": None}
    assert doc["rss_mib"] == {
        "start": 300.0,
        "after_first_swap": 310.0,
        "after_last_swap": 310.0,
        "after_each_swap": [310.0],
    }
    assert doc["publish_to_all_serving_s"] == {"max": 1.2, "median": 1.2}
