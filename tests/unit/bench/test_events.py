"""`bench events`: every sampled event judged against a list written just before it, on the hand-made shop of
the end-to-end tests (each list worked out there) with the reversing stand-in model."""

import pytest

from rankstream.bench.events import Checked, Reach, bench_events, check, compare, reach_split, sampled
from rankstream.data.prepare import Prepared
from rankstream.stream.errors import ConfigError
from tests.unit.evaluation.test_endtoend import U1, U3, U4, Reverser, shop  # noqa: F401 (shop: a fixture)


def test_every_nth_test_event_is_sampled(shop: Prepared) -> None:  # noqa: F811
    events, picked = sampled(shop, 2)
    test = [k for k, e in enumerate(events) if e[2] >= int(shop.split.valid_end.timestamp() * 1000)]
    assert len(test) == 6 and picked == {test[1], test[3], test[5]}
    with pytest.raises(ValueError, match="every"):
        check(shop, Reverser(), 10, "live", 0)
    with pytest.raises(ValueError, match="tables"):
        check(shop, Reverser(), 10, "frozen", 1)


def test_held_tables_reach_nothing_the_user_buys_next(shop: Prepared) -> None:  # noqa: F811
    held = check(shop, Reverser(), 10, "held", 1)
    # Test events with a history: u1 c, u1 e (continuing), u10 d, u10 f (continuing), u12 e; u13 has none.
    # Held at the train split the tables know a<->b, c<->d and a, b trending: u1 gets [] then [d], u10 [a, b]
    # twice, u12 (e, a) [b]. None holds the item bought.
    assert [(c.user, c.rank, c.candidate, c.continuing) for c in held] == [
        (U1, -1, False, False),
        (U1, -1, False, True),
        (U3, -1, False, False),
        (U3, -1, False, True),
        (U4, -1, False, False),
    ]


def test_live_tables_reach_the_next_line_of_a_basket(shop: Prepared) -> None:  # noqa: F811
    live = check(shop, Reverser(), 10, "live", 1)
    before = check(shop, Reverser(), 10, "before", 1)
    # u1 after c: a votes e (u12's Jan 12 basket), c votes d: [d, e], reversed e first. The live tables also
    # hold u1's c of the same time, which moves neither list; `before` leaves it out.
    assert (live[1].user, live[1].rank, live[1].candidate) == (U1, 0, True)
    assert (before[1].user, before[1].rank) == (U1, 0)
    # A first line reads the same tables either way: nothing of its time was applied before it.
    assert [c for c in live if not c.continuing] == [c for c in before if not c.continuing]


def test_compare_resamples_users_and_divides_hit_rates() -> None:
    held = [Checked("u", -1, False, False), Checked("u", 0, True, True), Checked("v", -1, True, False)]
    live = [Checked("u", 0, True, False), Checked("u", 0, True, True), Checked("v", -1, True, False)]
    r = compare({"live": live, "held": held}, 1, "m", {})
    assert r.arms["live"].hit_rate_at_10 == pytest.approx(2 / 3, abs=1e-5)
    assert r.arms["held"].hit_rate_at_10 == pytest.approx(1 / 3, abs=1e-5)
    assert r.arms["held"].candidate_rate == pytest.approx(2 / 3, abs=1e-5)
    assert r.arms["live"].continuing == pytest.approx(1 / 3, abs=1e-5)
    assert r.ratios["live / held"]["hit_rate@10"]["ratio"] == pytest.approx(2.0)
    assert r.ratios_continuing["live / held"]["hit_rate@10"]["ratio"] == pytest.approx(1.0)  # u's second: both hit
    lo, hi = r.ratios["live / held"]["hit_rate@10"]["ci95"]  # type: ignore[misc]
    assert lo <= 2.0 <= hi
    alone = compare({"live": live}, 1, "m", {})  # one arm: its figures, no pair
    assert alone.arms["live"] == r.arms["live"] and alone.ratios == {} and alone.reach == {}


def test_the_reach_split_counts_each_arms_hits_where_each_reaches() -> None:
    live = [
        Checked("u", 0, True, False),  # both reach, both hit
        Checked("u", 3, True, True),  # both reach, only live hits
        Checked("v", 1, True, False),  # live alone reaches, and hits
        Checked("v", -1, True, True),  # live alone reaches, misses
        Checked("w", -1, False, False),  # held alone reaches, and hits
        Checked("w", -1, False, True),  # neither: in no part
    ]
    held = [
        Checked("u", 5, True, False),
        Checked("u", -1, True, True),
        Checked("v", -1, False, False),
        Checked("v", -1, False, True),
        Checked("w", 2, True, False),
        Checked("w", -1, False, True),
    ]
    assert reach_split(live, held, ("live", "held")) == {
        "both": Reach(2, 2, 1),
        "live only": Reach(2, 1, 0),
        "held only": Reach(1, 0, 1),
    }
    assert compare({"live": live, "held": held}, 1, "m", {}).reach["live / held"]["live only"] == Reach(2, 1, 0)
    with pytest.raises(ValueError, match="different events"):
        reach_split(live, list(reversed(held)), ("live", "held"))
    with pytest.raises(ValueError):  # a shorter arm is not the same events either
        reach_split(live, held[:-1], ("live", "held"))


def test_the_report_names_every_arm_and_pair(shop: Prepared) -> None:  # noqa: F811
    import json

    from rankstream.bench.events import format_events

    r = bench_events(shop, Reverser(), 10, every=1)
    out = json.loads(r.to_json())
    assert set(out["arms"]) == {"live", "held", "before"} and out["arms"]["held"]["events"] == 5
    assert set(out["ratios"]) == {"live / held", "before / held", "before / live"}
    assert "live / held hit-rate@10" in format_events(r)
    assert set(out["reach"]["live / held"]) == {"both", "live only", "held only"}
    assert out["half_life_days"] == 14.0 and "half-life 14 days" in format_events(r)


def test_every_arm_keeps_the_tables_it_is_given(shop: Prepared) -> None:  # noqa: F811
    from rankstream.stream.live import LiveParams

    # Tables that serve no neighbour and no trending item propose nothing, where the default ones reach two
    # of the five items bought.
    bare = LiveParams(neighbours=0, trending=0)
    assert bench_events(shop, Reverser(), 10, every=1, tables=("live",), params=bare).arms["live"].candidate_rate == 0
    assert bench_events(shop, Reverser(), 10, every=1, tables=("live",)).arms["live"].candidate_rate == 0.4
    assert bench_events(shop, Reverser(), 10, every=1, params=LiveParams(half_life_days=30)).half_life_days == 30
    # The shop sells in 2024: a 3-day half-life's weights overflow in 2018, which is said before any replay.
    with pytest.raises(ConfigError, match="overflow before the data's last event .2024-01"):
        bench_events(shop, Reverser(), 10, every=1, params=LiveParams(half_life_days=3))
