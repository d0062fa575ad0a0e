"""`bench live`'s next-basket filter: which checked events count as next-basket predictions."""

from rankstream.bench.live import next_basket, per_user
from rankstream.stream.recorder import Outcome


def test_events_checked_against_a_list_from_their_own_basket_are_left_out() -> None:
    # Partition 0: offsets 0-1 one basket at t=100, offsets 2-4 the next at t=200.
    basket = {(0, 0): 100, (0, 1): 100, (0, 2): 200, (0, 3): 200, (0, 4): 200}
    outcomes = [
        Outcome("u", 3, 0, 2, 1),  # list from the previous basket: kept
        Outcome("u", -1, 0, 3, 2),  # list written after offset 2, same basket: left out
        Outcome("u", 0, 0, 4, 1),  # the scorer had not written since the previous basket: kept
        Outcome("u", 5, 0, 1, None),  # no known event behind the list: kept
    ]
    assert next_basket(outcomes, basket) == [outcomes[0], outcomes[2], outcomes[3]]


def test_per_user_sums_events_hits_and_gain() -> None:
    out = per_user([Outcome("u", 0, 0, 1, 0), Outcome("u", 12, 0, 2, 0), Outcome("v", -1, 1, 1, 0)])
    assert out["u"][:2] == (2, 1) and abs(out["u"][2] - 1.0) < 1e-12
    assert out["v"] == (1, 0, 0.0)


def test_the_report_carries_each_arms_lists_written() -> None:
    import json

    from rankstream.bench.live import Arm, LiveBench, format_live

    def arm(hit: float, written: int) -> Arm:
        nb = {"events": 10, "hit_rate@10": 0.1, "ndcg@10": 0.05, "ci95": {"hit_rate@10": [0.0, 0.2]}}
        ci = {"hit_rate@10": [hit - 0.01, hit + 0.01], "ndcg@10": [0.04, 0.06]}
        return Arm(100, hit, 0.05, ci, 0, 0, 50.0, written, nb)

    ratio = {"hit_rate@10": {"ratio": 1.1, "ci95": [1.0, 1.2]}}
    r = LiveBench(
        100,
        250.0,
        "m",
        "train",
        "together",
        arm(0.1, 14_654),
        arm(0.11, 14_180),
        ratio,
        ratio,
        {"p50": 1.0, "p99": 2.0},
        0,
    )
    out = json.loads(r.to_json())
    assert (out["frozen"]["lists_written"], out["live"]["lists_written"]) == (14_654, 14_180)
    assert out["live"]["hit_rate@10"] == 0.11 and "hit_rate_at_10" not in out["live"]
    text = format_live(r)
    assert "lists written" in text and "14,654" in text and "14,180" in text
    assert out["arms_run"] == "together" and "arms run together" in text


def test_the_live_arm_runs_in_the_next_database() -> None:
    from rankstream.bench.live import next_database

    assert next_database("redis://127.0.0.1:6390/3") == "redis://127.0.0.1:6390/4"
    assert next_database("redis://:pw@host:1/15") == "redis://:pw@host:1/0"  # Redis has 16
    assert next_database("redis://host:1") == "redis://host:1/1"
