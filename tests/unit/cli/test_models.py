from rankstream.cli.models import format_versions
from rankstream.stream.canary import ArmCounts, Clusters, latency_fields

ROW = {
    "version": "v1",
    "active": True,
    "pinned": False,
    "ok": True,
    "metrics": {"valid_ndcg@10": 0.29},
    "method_chain": ["distil"],
}


def summary(events: int, hits: int, latencies: list[float]) -> dict:  # type: ignore[type-arg]
    fields = {k.split(":")[1]: n for k, n in latency_fields("v", latencies).items()}
    return ArmCounts.from_fields(fields | {"events": events, "hits": hits}).with_clusters(Clusters(users=3)).summary()


def test_the_listing_shows_each_version_s_live_figures_and_the_running_canary_and_shadow() -> None:
    state = {
        "root": "/models",
        "active": "v1",
        "pinned": None,
        "canary": {
            "version": "v2",
            "share": 0.1,
            "against": "v1",
            "running_s": 42.0,
            "arms": {"active": summary(900, 90, [40.0] * 10), "canary": summary(100, 3, [60.0] * 10)},
        },
        "shadow": {"version": "v3", "sample": 0.05, "events": 40, "hit_rate": 0.05, "served_hit_rate": 0.1},
        "versions": [
            ROW | {"live": summary(900, 90, [40.0] * 10) | {"error_rate": 0.02}},
            ROW | {"version": "v2", "active": False, "live": {}},
        ],
        "replicas": {},
    }
    text = format_versions(state)
    v1 = next(line for line in text.splitlines() if line.startswith("  * "))
    assert "0.2900" in v1 and "0.100" in v1 and " 47 " in v1 and "2.00%" in v1
    assert "canary v2 at 10% vs v1 for 42s: hit-rate 0.0300 (100 events) vs 0.1000 (900)" in text
    assert "shadow v3 scores 5% of users (not served): would-be hit-rate 0.05 vs served 0.1 on the same 40" in text
