"""The live tables' arithmetic: what a share holds after events, how shares merge, how they are stored."""

import math
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankstream.data.live_replay import LiveReplay
from rankstream.stream.live import (
    DAY_MS,
    ItemCounts,
    LiveParams,
    SalesView,
    Share,
    dump_neighbours,
    dump_trend,
    merge_counts,
    merge_neighbours,
    parse_neighbours,
    parse_trend,
    partition_of,
    top_weighted,
)

NO_DECAY = LiveParams(half_life_days=math.inf, keep=10_000)
T0 = 1_300_000_000_000  # 2011-03-13

# (user, item, day, minute): small alphabets so baskets, repeats and next baskets all happen.
events = st.lists(
    st.tuples(st.sampled_from("uvw"), st.sampled_from("abcdef"), st.integers(0, 20), st.sampled_from([0, 1])),
    max_size=40,
)


def as_stream(evs: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int]]:
    """Events in time order (stable), each at day * 1 day + minute: what the replay produces."""
    timed = [(u, i, T0 + d * DAY_MS + m * 60_000) for u, i, d, m in evs]
    return sorted(timed, key=lambda e: e[2])


def brute_force(stream: list[tuple[str, str, int]], next_days: float = 7.0) -> dict[str, dict[str, float]]:
    """prepare's definition, written out: 1 per basket holding both items, 0.5 per (basket, same user's
    next basket within 7 days) holding one each, both directions; a basket is a user's events at one time."""
    baskets: dict[tuple[str, int], list[str]] = {}
    for u, i, t in stream:
        items = baskets.setdefault((u, t), [])
        if i not in items:
            items.append(i)
    w: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_user: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
    for (u, t), items in baskets.items():
        by_user[u].append((t, items))
        for a in items:
            for b in items:
                if a != b:
                    w[a][b] += 1.0
    for seq in by_user.values():
        seq.sort()
        for (t1, b1), (t2, b2) in zip(seq, seq[1:], strict=False):
            if t2 - t1 <= next_days * DAY_MS:
                for a in b1:
                    for b in b2:
                        if a != b:
                            w[a][b] += 0.5
                            w[b][a] += 0.5
    return {a: dict(nb) for a, nb in w.items()}


@settings(max_examples=200, deadline=None)
@given(events)
def test_a_share_counts_covisits_as_prepare_defines_them(evs: list[tuple[str, str, int, int]]) -> None:
    stream = as_stream(evs)
    share = Share(NO_DECAY)
    for u, i, t in stream:
        share.apply(u, i, t)
    got = {a: nb for a, nb in share.neighbours.items() if nb}
    assert got == brute_force(stream)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 5))
def test_shares_merged_over_partitions_equal_one_share(evs: list[tuple[str, str, int, int]], partitions: int) -> None:
    stream = as_stream(evs)
    one, split = LiveReplay(NO_DECAY, 1), LiveReplay(NO_DECAY, partitions)
    one.apply_all(stream)
    split.apply_all(stream)
    items = sorted({i for _, i, _ in stream})
    assert split.neighbours(items) == one.neighbours(items)
    for item, c in split.counts(items).items():
        assert c == one.counts([item])[item]


def test_basket_counts_windows_buyers_and_first_sale() -> None:
    share = Share(LiveParams())
    share.apply("u", "a", T0)
    share.apply("u", "a", T0)  # the same item twice in one basket is one basket
    share.apply("u", "a", T0 + 3 * DAY_MS)
    share.apply("v", "a", T0 + 20 * DAY_MS)
    c = share.counts["a"]
    assert (c.baskets, c.buyers, c.first_ms) == (3, 2, T0)
    s = c.stats_at(T0 + 22 * DAY_MS)
    assert (s.baskets_7d, s.baskets_30d, s.age_days) == (1, 3, 22)
    assert c.stats_at(T0 + 60 * DAY_MS).baskets_30d == 0


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(-5, 80), st.integers(1, 9), max_size=40), st.integers(0, 90 * DAY_MS))
def test_windows_count_the_days_ending_on_the_day_read(days: dict[int, int], offset: int) -> None:
    """The 7- and 30-day windows as the signals define them: days d with today - w < d <= today."""
    ts = T0 - T0 % DAY_MS + offset
    today = ts // DAY_MS
    c = ItemCounts(sum(days.values()), T0, 1, {today - 60 + d: n for d, n in days.items()})
    s = c.stats_at(ts)
    assert s.baskets_7d == sum(n for d, n in c.days.items() if today - 7 < d <= today)
    assert s.baskets_30d == sum(n for d, n in c.days.items() if today - 30 < d <= today)


def test_decay_halves_a_covisit_per_half_life_and_keeps_the_heaviest() -> None:
    params = LiveParams(half_life_days=10, keep=2)
    share = Share(params)
    share.apply("u", "a", T0)
    share.apply("u", "b", T0)
    share.apply("v", "a", T0 + 10 * DAY_MS)
    share.apply("v", "c", T0 + 10 * DAY_MS)
    nb = share.neighbours["a"]
    assert math.isclose(nb["c"] / nb["b"], 2.0)
    assert merge_neighbours([nb], 5) == ["c", "b"]
    for k, item in enumerate("defgh"):  # a grows past keep * 2 neighbours and is cut back to the heaviest
        share.apply("w", "a", T0 + (11 + k) * DAY_MS)
        share.apply("w", item, T0 + (11 + k) * DAY_MS)
    assert len(share.neighbours["a"]) <= params.keep * 2
    assert "b" not in share.neighbours["a"]


def test_trending_rolls_once_a_day_over_the_complete_days_before() -> None:
    share = Share(LiveParams(trending=2))
    for day, item in [(0, "a"), (0, "b"), (1, "b"), (2, "c")]:
        share.apply(f"u{day}{item}", item, T0 + day * DAY_MS)
    assert dict(share.trend) == {"a": 1, "b": 2}  # day 2's first event saw days 0 and 1
    assert share.trend_day == (T0 + 2 * DAY_MS) // DAY_MS


def test_merges_sum_the_shares() -> None:
    assert merge_neighbours([{"a": 1.0, "b": 2.0}, {"a": 2.5}, None], 5) == ["a", "b"]
    merged = merge_counts([ItemCounts(2, 50, 1, {3: 2}), None, ItemCounts(1, 40, 1, {3: 1, 4: 0})])
    assert merged == ItemCounts(3, 40, 2, {3: 3, 4: 0})


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # murmur2 of the key, sign bit cleared, modulo the partition count (values from Kafka's Java client).
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(4))
    for user in ["17850", "u1", "x" * 50, "ü"]:
        assert partition_of(user, 4) == DefaultPartitioner()(user.encode(), parts, parts)


ids = st.text(st.characters(blacklist_characters=",;", blacklist_categories=("Cs",)), min_size=1, max_size=12)


@given(st.dictionaries(ids, st.floats(allow_nan=False, allow_infinity=False), max_size=20))
def test_neighbours_round_trip_exactly(nb: dict[str, float]) -> None:
    assert parse_neighbours(dump_neighbours(nb)) == nb


@given(
    st.integers(0, 10**6),
    st.integers(0, 2**50),
    st.integers(0, 10**6),
    st.dictionaries(st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_counts_round_trip(baskets: int, first: int, buyers: int, days: dict[int, int]) -> None:
    c = ItemCounts(baskets, first, buyers, days)
    assert ItemCounts.parse(c.dump()) == c


@given(
    st.lists(st.tuples(ids.filter(lambda s: ":" not in s), st.integers(0, 10**6)), max_size=10), st.integers(0, 10**6)
)
def test_trend_round_trips(trend: list[tuple[str, int]], day: int) -> None:
    assert parse_trend(dump_trend(trend, day)) == (day, trend)


@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_stored_values_that_do_not_parse_raise_value_error_only(raw: str) -> None:
    """What Redis hands back may be anything a stray tool wrote: readers catch ValueError, nothing else."""
    assert_parses_or_refuses(raw)


@st.composite
def mutated_dumps(draw: st.DrawFn) -> str:
    """A valid stored value with a few characters replaced, deleted or inserted."""
    valid = draw(
        st.sampled_from(
            [
                dump_neighbours({"a:1": 0.5, "b": 1e300, "c": -0.0}),
                ItemCounts(3, 1_300_000_000_000, 2, {15000: 2, 15001: 1}).dump(),
                dump_trend([("a", 3), ("b", 1)], 15000),
            ]
        )
    )
    chars = list(valid)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["replace", "delete", "insert"]))
        ch = draw(st.characters(blacklist_categories=("Cs",)))
        if op == "insert" or not chars:
            chars.insert(pos, ch)
        elif op == "delete":
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[min(pos, len(chars) - 1)] = ch
    return "".join(chars)


@given(mutated_dumps())
def test_mutated_stored_values_raise_value_error_only(raw: str) -> None:
    assert_parses_or_refuses(raw)


def assert_parses_or_refuses(raw: str) -> None:
    """Each parser returns a value of its type, or raises ValueError; any other exception fails the test."""
    checks = (
        (parse_neighbours, lambda v: all(isinstance(w, float) for w in v.values())),
        (ItemCounts.parse, lambda v: isinstance(v, ItemCounts) and all(isinstance(n, int) for n in v.days.values())),
        (parse_trend, lambda v: isinstance(v[0], int) and all(isinstance(n, int) for _, n in v[1])),
    )
    for parse, well_typed in checks:
        try:
            value = parse(raw)
        except ValueError:
            continue
        assert well_typed(value), f"{parse.__name__}({raw!r}) returned {value!r}"


@given(st.dictionaries(ids, st.sampled_from([0.0, 0.5, 1.0, 2.5]) | st.floats(0, 1e9), max_size=60), st.integers(0, 70))
def test_top_weighted_is_heaviest_first_ties_by_id(weights: dict[str, float], n: int) -> None:
    assert top_weighted(weights, n) == sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(-5, 80), st.integers(1, 9), max_size=40),
    st.lists(st.integers(0, 90 * DAY_MS), min_size=1, max_size=12),
)
def test_a_sales_view_reads_what_its_counts_read_in_any_order(days: dict[int, int], offsets: list[int]) -> None:
    """The scorer's view keeps one day's windows: read at any times, back and forth across days, it gives
    exactly `ItemCounts.stats_at`."""
    base = T0 - T0 % DAY_MS
    c = ItemCounts(sum(days.values()), T0 + 3 * DAY_MS, 2, {base // DAY_MS - 10 + d: n for d, n in days.items()})
    view = SalesView(c)
    for off in offsets:
        assert view.stats_at(base + off) == c.stats_at(base + off)


def test_weights_end_where_a_double_does() -> None:
    params = LiveParams(half_life_days=3)
    end = int(params.weights_end_ms())
    assert math.isfinite(params.weight(end - DAY_MS))
    with pytest.raises(OverflowError):
        params.weight(end)
    assert LiveParams().weights_end_ms() > datetime(2049, 1, 1, tzinfo=UTC).timestamp() * 1000  # the comment's 2049
