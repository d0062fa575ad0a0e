from datetime import UTC, datetime

from rankstream.stream import batch as b
from rankstream.stream.candidates import covisit_candidates
from rankstream.stream.events import ClickEvent
from rankstream.stream.store import EMPTY_STATE, UserState

TS = datetime(2011, 11, 1, tzinfo=UTC)


def valid(user: str, item: str, offset: int, partition: int = 0) -> b.Valid:
    return b.Valid(partition, offset, 1000 + offset, ClickEvent(user_id=user, item_id=item, ts=TS))


def test_plan_folds_events_newest_first_without_duplicates() -> None:
    evs = [valid("u", "a", 1), valid("u", "b", 2), valid("u", "a", 3)]
    plan = b.plan_user("u", evs, UserState(("c", "b"), 0, 0, topic=""), history_len=10)
    assert plan is not None
    assert plan.history == ("a", "b", "c")
    assert plan.last.offset == 3
    assert plan.events == 3


def test_plan_skips_events_already_applied() -> None:
    state = UserState(("b", "a"), 0, 2, topic="")
    assert b.plan_user("u", [valid("u", "a", 1), valid("u", "b", 2)], state, 10) is None
    plan = b.plan_user("u", [valid("u", "b", 2), valid("u", "d", 3)], state, 10)
    assert plan is not None and plan.history == ("d", "b", "a") and plan.events == 1


def test_other_partition_or_topic_is_not_mistaken_for_applied() -> None:
    state = UserState(("a",), 1, 50, topic="")
    plan = b.plan_user("u", [valid("u", "z", 3, partition=0)], state, 10)
    assert plan is not None and plan.history == ("z", "a")
    elsewhere = UserState(("a",), 0, 50, topic="clicks-old")
    assert b.plan_user("u", [valid("u", "z", 3, partition=0)], elsewhere, 10) is not None


def test_history_is_capped() -> None:
    plan = b.plan_user("u", [valid("u", str(i), i) for i in range(10)], EMPTY_STATE, history_len=4)
    assert plan is not None and plan.history == ("9", "8", "7", "6")


def test_group_by_user_keeps_order() -> None:
    evs = [valid("u", "a", 1), valid("v", "b", 2), valid("u", "c", 3)]
    grouped = b.group_by_user(evs)
    assert [v.offset for v in grouped["u"]] == [1, 3]
    assert [v.offset for v in grouped["v"]] == [2]


def test_candidate_pairs_use_shared_text_and_skip_unknown_items() -> None:
    plan = b.UserPlan("u", ("a",), valid("u", "a", 1), 1)
    catalog = {"a": "Red Mug", "b": "Blue Mug"}
    cands, pairs = b.candidate_pairs(plan, {"a": ["b", "ghost"]}, [], catalog, 10)
    assert cands == ["b"]
    assert pairs == [("red mug", "1 | blue mug")]


def test_signals_need_the_candidates_neighbour_lists_and_use_the_shared_function() -> None:
    from rankstream.stream.live import DAY_MS, ItemCounts, event_ms
    from rankstream.stream.signals import ItemStats, candidate_signals

    plan = b.UserPlan("u", ("a", "c"), valid("u", "a", 1), 1)
    assert b.signal_items([["b", "x"], ["x", "y"]]) == ["b", "x", "y"]
    nb = {"a": ["b", "x"], "b": ["c"], "x": []}
    at = event_ms(plan.last.event)
    counts = {"b": ItemCounts(baskets=3, first_ms=at - 40 * DAY_MS, buyers=2, days={at // DAY_MS - 3: 2})}
    catalog = {"a": "Red Mug", "b": "Blue Mug", "c": "Tea", "x": "Box"}
    rows = b.user_signals(plan, ["b", "x"], nb, counts, catalog)
    assert rows.shape == (2, 8)
    # The statistics are read at the user's event time: 2 baskets in the last 7 and 30 days, 40 days old.
    stats = {"b": ItemStats(baskets=3, baskets_7d=2, baskets_30d=2, buyers=2, age_days=40)}
    assert (rows == candidate_signals(("a", "c"), ["b", "x"], nb, stats, catalog)).all()


def test_top_k_orders_by_score_and_breaks_ties_by_candidate_order() -> None:
    assert b.top_k(["x", "y", "z"], [0.1, 0.5, 0.5], 2) == (("y", 0.5), ("z", 0.5))


def test_covisit_candidates_vote_exclude_seen_and_fill_with_trending() -> None:
    nb = {"a": ["x", "y", "b"], "b": ["y", "z"]}
    got = covisit_candidates(["a", "b"], nb, trending=["t", "x", "a"], n=4)
    # y: 1/2 (from a, rank 1) + 1/2 (from b, rank 0) = 1.0; x: 1.0 from a; ties keep first-seen order.
    assert got[:2] == ["x", "y"]
    assert got[2] == "z"
    assert got[3] == "t"  # trending fill skips x (taken) and a (seen)
    assert "b" not in got


def test_live_quality_counts_clicks_on_the_list_on_screen_per_version() -> None:
    shown = UserState(("a",), 0, 1, shown=("x", "y"), shown_version="v1", topic="")
    plan = b.plan_user("u", [valid("u", "x", 2), valid("u", "z", 3), valid("u", "y", 4)], shown, 10)
    assert plan is not None and plan.hits == 2 and plan.events == 3
    other = b.plan_user("w", [valid("w", "q", 5)], UserState((), 0, 0, ("q",), "v2"), 10)
    first = b.plan_user("n", [valid("n", "q", 6)], EMPTY_STATE, 10)  # nothing shown yet: not counted
    assert b.live_quality([plan, other, first]) == {"v1": (3, 2), "v2": (1, 1)}


def test_chunks_put_the_longest_waiting_users_first() -> None:
    evs = [valid("late", "a", 9), valid("early", "b", 2), valid("mid", "c", 5), valid("early", "d", 7)]
    plans = [p for u, e in b.group_by_user(evs).items() if (p := b.plan_user(u, e, EMPTY_STATE, 10)) is not None]
    assert {p.user_id: p.since_ms for p in plans} == {"late": 1009, "early": 1002, "mid": 1005}
    chunks = b.oldest_first_chunks(plans, 2)
    assert [[p.user_id for p in c] for c in chunks] == [["early", "mid"], ["late"]]
    assert b.oldest_first_chunks([], 2) == []


def test_users_still_clicking_are_held_back_but_not_for_ever() -> None:
    evs = [valid("done", "a", 0), valid("clicking", "b", 80), valid("endless", "c", 10), valid("endless", "d", 95)]
    plans = [p for u, e in b.group_by_user(evs).items() if (p := b.plan_user(u, e, EMPTY_STATE, 10)) is not None]
    # At 1,100 ms: "done" last clicked 100 ms ago, "clicking" 20 ms ago, "endless" 5 ms ago but first 90 ms ago.
    due, held = b.hold_back(plans, 1100, quiet_ms=30)
    assert [p.user_id for p in due] == ["done", "endless"]
    assert [p.user_id for p in held] == ["clicking"]
    assert b.hold_back(plans, 1100, quiet_ms=0) == (plans, [])
    # A producer clock ahead of ours must not hold anybody back.
    assert b.hold_back(plans, 1050, quiet_ms=30)[1] == []


def test_plan_notes_each_checked_event_and_the_list_it_was_checked_against() -> None:
    state = UserState(("a",), 0, 4, shown=("x", "b"), shown_version="v1", topic="")
    plan = b.plan_user("u", [valid("u", "b", 3), valid("u", "b", 5), valid("u", "y", 7)], state, 10)
    assert plan is not None
    assert plan.ranks == (1, -1) and plan.offsets == (5, 7)  # offset 3 is already reflected
    assert plan.shown_offset == 4
    unseen = b.plan_user("u", [valid("u", "b", 1)], EMPTY_STATE, 10)
    assert unseen is not None and unseen.ranks == () and unseen.offsets == ()
