import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.stream.canary import (
    LATENCY_BOUNDS_MS,
    ArmCounts,
    Clusters,
    Policy,
    UserTotals,
    decide,
    group_counters,
    in_share,
    latency_bucket,
    latency_fields,
    z_score,
)
from rankstream.stream.errors import ConfigError
from rankstream.stream.rollouts import Canary, parse_canary, parse_shadow

POLICY = Policy(min_events=2000)


def arm(events: int, hits: int, latencies_ms: list[float] = (), errors: int = 0) -> ArmCounts:  # type: ignore[assignment]
    fields = {k.split(":")[1]: n for k, n in latency_fields("v", list(latencies_ms)).items()}
    return ArmCounts.from_fields(fields | {"events": events, "hits": hits, "errors": errors})


def test_a_user_falls_in_one_arm_for_good_and_the_share_is_kept() -> None:
    users = [f"u{i}" for i in range(20_000)]
    picked = [u for u in users if in_share(u, 0.1, "v2")]
    assert 0.09 < len(picked) / len(users) < 0.11
    assert picked == [u for u in users if in_share(u, 0.1, "v2")]
    assert not any(in_share(u, 0.0, "v2") for u in users[:100])
    # Another canary draws another share: the same users are not always the guinea pigs.
    assert set(picked) != {u for u in users if in_share(u, 0.1, "v3")}


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_latency_falls_in_the_first_bucket_whose_bound_holds_it(ms: float) -> None:
    i = latency_bucket(ms)
    if i < len(LATENCY_BOUNDS_MS):
        assert ms <= LATENCY_BOUNDS_MS[i]
    if i > 0:
        assert ms > LATENCY_BOUNDS_MS[i - 1]


@given(st.lists(st.floats(min_value=5, max_value=60_000, allow_nan=False), min_size=1, max_size=400))
def test_p99_from_the_histogram_is_within_a_bucket_of_the_true_one(latencies: list[float]) -> None:
    true_p99 = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    p99 = arm(0, 0, latencies).p99_ms()
    assert p99 is not None and true_p99 <= p99 <= true_p99 * 1.25 + 0.1


@given(st.dictionaries(st.text(max_size=12), st.integers(min_value=-(2**40), max_value=2**40), max_size=30))
def test_arbitrary_counter_fields_are_read_without_error(fields: dict[str, int]) -> None:
    counts = ArmCounts.from_fields(fields)
    assert len(counts.latency) == len(LATENCY_BOUNDS_MS) + 1
    counts.summary()


def test_counters_group_by_version_even_when_a_version_holds_colons() -> None:
    raw = {"v1:events": "3", "v1:lat2": "1", "c:2024:x:hits": "4"}
    assert group_counters(raw) == {"v1": {"events": 3, "lat2": 1}, "c:2024:x": {"hits": 4}}


def test_a_clearly_worse_canary_is_rolled_back_and_an_equal_one_promoted() -> None:
    active = arm(4000, 200)
    assert decide(active, arm(2500, 50), POLICY).action == "rollback"
    assert decide(active, arm(2500, 126), POLICY).action == "promote"
    assert decide(active, arm(2500, 160), POLICY).action == "promote"  # better is promoted too


def test_before_enough_events_only_overwhelming_evidence_decides() -> None:
    active = arm(1000, 100)
    assert decide(active, arm(600, 45), POLICY).action == "wait"  # worse-looking, not overwhelming
    early = decide(active, arm(600, 5), POLICY)
    assert early.action == "rollback" and "interim" in early.reason
    assert decide(active, arm(100, 0), POLICY).action == "wait"  # below a quarter of min_events


def test_a_slower_or_failing_canary_is_rolled_back_on_equal_hit_rate() -> None:
    active = arm(3000, 150, [40.0] * 990 + [90.0] * 10)
    slow = arm(3000, 150, [40.0] * 950 + [400.0] * 50)
    assert decide(active, slow, POLICY).action == "rollback"
    failing = arm(3000, 150, [40.0] * 1000, errors=40)
    verdict = decide(active, failing, POLICY)
    assert verdict.action == "rollback" and "error rate" in verdict.reason
    # A few errors alone never decide.
    assert decide(active, arm(3000, 150, [40.0] * 1000, errors=3), POLICY).action == "promote"


def test_the_false_rollback_rate_of_equal_arms_stays_near_five_percent() -> None:
    """Equal arms, looked at every 250 events per arm as a replica would: the interim bound must not
    inflate the overall rate much beyond the final test's 5%."""
    rng = random.Random(7)
    rollbacks, runs = 0, 1000
    for _ in range(runs):
        a = c = (0, 0)
        for _look in range(8):
            a = (a[0] + 250, a[1] + sum(rng.random() < 0.05 for _ in range(250)))
            c = (c[0] + 250, c[1] + sum(rng.random() < 0.05 for _ in range(250)))
            verdict = decide(arm(*a), arm(*c), POLICY)
            if verdict.action != "wait":
                rollbacks += verdict.action == "rollback"
                break
    assert rollbacks / runs < 0.08


def test_a_canary_with_half_the_hit_rate_is_caught_nearly_always() -> None:
    rng = random.Random(11)
    caught = 0
    for _ in range(200):
        a = (2000, sum(rng.random() < 0.05 for _ in range(2000)))
        c = (2000, sum(rng.random() < 0.025 for _ in range(2000)))
        caught += decide(arm(*a), arm(*c), POLICY).action == "rollback"
    assert caught >= 190


def test_the_figures_since_a_canary_started_exclude_what_came_before() -> None:
    canary = Canary("v2", 0.1, "v1", 1.5, {"v1": {"events": 100, "hits": 10, "lat3": 5}})
    counters = {
        "v1": {"events": 150, "hits": 12, "lat3": 9},
        "v2": {"events": 20, "hits": 4},
        "v2@c1500": {"users": 3, "n": 20, "h": 4, "nn": 150, "hh": 6, "hn": 30},
    }
    active, c = canary.arms(counters)
    assert (active.events, active.hits, active.latency[3]) == (50, 2, 4)
    assert (c.events, c.hits) == (20, 4)
    assert c.clusters == Clusters(3, 20, 4, 150, 6, 30) and active.clusters == Clusters()


def test_a_stored_canary_reads_back() -> None:
    canary = Canary("v2", 0.25, "v1", 12.5, {"v1": {"events": 3}})
    assert parse_canary(canary.to_json()) == canary


VALID = json.dumps({"version": "v2", "share": 0.1, "active": "v1", "started_at": 1.0, "baseline": {}})


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_any_text_in_the_canary_key_is_a_canary_or_a_config_error(raw: str) -> None:
    try:
        parse_canary(raw)
    except ConfigError as exc:
        assert "models canary --end" in str(exc)


@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.characters())
def test_a_mutated_canary_record_is_a_canary_or_a_config_error(at: int, char: str) -> None:
    raw = VALID[:at] + char + VALID[at + 1 :]
    try:
        canary = parse_canary(raw)
    except ConfigError:
        return
    assert 0 < canary.share < 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["version", "share", "active", "started_at", "baseline", "x"]), JSON))
def test_a_canary_record_with_odd_values_is_a_canary_or_a_config_error(data: dict[str, object]) -> None:
    try:
        canary = parse_canary(json.dumps(data))
    except ConfigError as exc:
        assert "rs:{model}:canary" in str(exc)
        return
    assert 0 < canary.share < 1 and isinstance(canary.version, str)


@pytest.mark.parametrize("raw", ['{"version": "v", "sample": 0}', '{"version": "v", "sample": 2}', "[]", "{"])
def test_a_bad_shadow_record_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="models shadow --stop"):
        parse_shadow(raw)


@given(st.text(max_size=200))
def test_any_text_in_the_shadow_key_is_a_shadow_or_a_config_error(raw: str) -> None:
    try:
        shadow = parse_shadow(raw)
    except ConfigError:
        return
    assert 0 < shadow.sample <= 1


@given(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 5), st.integers(0, 5)), max_size=40))
def test_the_running_increments_add_up_to_the_per_user_sums(adds: list[tuple[str, int, int]]) -> None:
    totals = UserTotals()
    summed: dict[str, int] = {}
    final: dict[str, tuple[int, int]] = {}
    for user, n, h in adds:
        if n == 0:
            assert not totals.add("c1", "v", user, n, h)  # nothing checked: nothing to add
            continue
        for k, v in totals.add("c1", "v", user, n, min(h, n)).items():
            summed[k] = summed.get(k, 0) + v
        n0, h0 = final.get(user, (0, 0))
        final[user] = (n0 + n, h0 + min(h, n))
    got = Clusters.from_fields({k.split(":")[1]: v for k, v in summed.items()})
    assert got.users == len(final)
    assert (got.n, got.h) == (sum(n for n, _ in final.values()), sum(h for _, h in final.values()))
    assert got.nn == sum(n * n for n, _ in final.values())
    assert got.hh == sum(h * h for _, h in final.values())
    assert got.hn == sum(n * h for n, h in final.values())


def test_a_new_canary_starts_the_per_user_sums_afresh() -> None:
    totals = UserTotals()
    totals.add("c1", "v", "u1", 3, 1)
    assert totals.add("c2", "v", "u1", 2, 0) == {
        "v@c2:n": 2,
        "v@c2:h": 0,
        "v@c2:nn": 4,
        "v@c2:hh": 0,
        "v@c2:hn": 0,
        "v@c2:users": 1,
    }


def _clustered_arm(rng: random.Random, users: int, scale: float) -> ArmCounts:
    """Users with their own hit propensity and basket-sized bursts of events, as in the click stream."""
    totals = UserTotals()
    sums: dict[str, int] = {}
    events = hits = 0
    for u in range(users):
        propensity = min(rng.betavariate(0.3, 5.0) * scale, 1.0)
        n = rng.randint(1, 40)
        h = sum(rng.random() < propensity for _ in range(n))
        events, hits = events + n, hits + h
        for k, v in totals.add("c", "v", f"u{u}", n, h).items():
            sums[k] = sums.get(k, 0) + v
    clusters = Clusters.from_fields({k.split(":")[1]: v for k, v in sums.items()})
    return ArmCounts(events, hits, clusters=clusters)


def test_on_clustered_events_the_test_over_users_keeps_false_rollbacks_near_five_percent() -> None:
    """Identical arms whose events come in per-user bursts: counting events as independent rolls back far
    more often than 5%; the variance over users does not."""
    rng = random.Random(3)
    over_users = over_events = 0
    runs = 400
    for _ in range(runs):
        a, c = _clustered_arm(rng, 300, 1.0), _clustered_arm(rng, 100, 1.0)
        over_users += decide(a, c, Policy(min_events=500)).action == "rollback"
        z = z_score(ArmCounts(a.events, a.hits), ArmCounts(c.events, c.hits))
        over_events += z is not None and z <= -1.645
    assert over_users / runs < 0.08
    assert over_events / runs > 0.12


def test_on_clustered_events_a_canary_at_a_third_of_the_hit_rate_is_caught() -> None:
    rng = random.Random(5)
    caught = sum(
        decide(_clustered_arm(rng, 300, 1.0), _clustered_arm(rng, 100, 1 / 3), Policy(min_events=500)).action
        == "rollback"
        for _ in range(100)
    )
    assert caught >= 90


def test_too_few_users_wait_for_more() -> None:
    rng = random.Random(1)
    a, c = _clustered_arm(rng, 300, 1.0), _clustered_arm(rng, 10, 1.0)
    assert decide(a, c, Policy(min_events=50)).action == "wait"
    worse = _clustered_arm(rng, 10, 0.0)
    assert decide(a, worse, Policy(min_events=50)).action == "wait", "not even on overwhelming evidence"
