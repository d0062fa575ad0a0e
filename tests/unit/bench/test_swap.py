"""The pure parts of `bench swap`: the ladder before the swaps, which lists each part counts, lost events."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.bench.ladder import (
    DRAIN_LIMIT_S,
    P99_LIMIT_MS,
    STEP_DOWN,
    STEP_UP,
    climb,
    judge_step,
    sustained,
    written_between,
)
from rankstream.bench.lists import ListSample, split_by_windows
from rankstream.bench.results import BySwap, Convergence, LadderStep, Rss, SwapBench
from rankstream.bench.swap import count_lost, format_swap, last_offsets
from rankstream.cli.main import build_parser
from rankstream.stream.errors import JobError
from rankstream.stream.recorder import Stats

times = st.floats(0.0, 1000.0, allow_nan=False)
samples = st.lists(st.builds(ListSample, times, st.floats(0.0, 5000.0, allow_nan=False), st.just("v1")), max_size=300)
offsets = st.dictionaries(st.sampled_from("abcdefgh"), st.tuples(st.integers(0, 3), st.integers(0, 10**6)))


def step(rate: float, kept_up: bool) -> LadderStep:
    return LadderStep(rate, 100.0 if kept_up else 1500.0, kept_up, 1000, 0.5, 400)


async def run_ladder(outcomes: list[bool], start: float, steps: int) -> list[LadderStep]:
    """The ladder on a fleet whose k-th step keeps up as `outcomes[k]` says."""
    tried: list[float] = []

    async def run(rate: float) -> LadderStep:
        tried.append(rate)
        return step(rate, outcomes[len(tried) - 1])

    return await climb(run, start, steps)


@given(outcomes=st.lists(st.booleans(), min_size=8, max_size=8), start=st.floats(10.0, 5000.0), steps=st.integers(1, 8))
async def test_the_ladder_goes_one_way_until_a_step_goes_the_other(
    outcomes: list[bool], start: float, steps: int
) -> None:
    ladder = await run_ladder(outcomes, start, steps)
    first = ladder[0].kept_up
    assert 1 <= len(ladder) <= steps and ladder[0].rate == start
    assert all(s.kept_up == first for s in ladder[:-1])
    if len(ladder) < steps:
        assert ladder[-1].kept_up != first, "the ladder stops only at a step that went the other way"
    for before, after in zip(ladder, ladder[1:], strict=False):
        assert after.rate == round(before.rate * (STEP_UP if first else STEP_DOWN), 1)


async def test_the_ladder_climbs_while_kept_up_and_descends_while_failing() -> None:
    up = await run_ladder([True, True, False, True, True, True, True, True], 400.0, 8)
    assert [(s.rate, s.kept_up) for s in up] == [(400.0, True), (500.0, True), (625.0, False)]
    assert sustained(up) == 500.0
    down = await run_ladder([False, False, True, True, True, True, True, True], 400.0, 8)
    assert [s.rate for s in down] == [400.0, 320.0, 256.0]
    assert sustained(down) == 256.0


async def test_a_ladder_that_never_keeps_up_fails_and_says_what_to_do() -> None:
    ladder = await run_ladder([False] * 8, 400.0, 3)
    assert len(ladder) == 3
    with pytest.raises(JobError, match="--rate"):
        sustained(ladder)


def test_a_step_counts_only_the_lists_written_while_it_ran() -> None:
    inside = [ListSample(10.0 + i / 100, 100.0, "v1") for i in range(200)]
    slow_outside = [ListSample(t, 5000.0, "v1") for t in (5.0, 9.99, 14.01, 30.0) for _ in range(50)]
    s = judge_step(500.0, 1000, slow_outside + inside, started=10.0, sent=13.0, drained=14.0)
    assert s == LadderStep(500.0, 100.0, True, 1000, 1.0, 200)


@pytest.mark.parametrize(
    ("latency_ms", "lists", "drained", "kept_up"),
    [
        (P99_LIMIT_MS, 200, 13.0 + DRAIN_LIMIT_S, True),
        (P99_LIMIT_MS + 1, 200, 14.0, False),  # too slow
        (100.0, 200, 13.0 + DRAIN_LIMIT_S + 0.5, False),  # the lag outlasted the limit
        (100.0, 100, 14.0, False),  # too few lists to tell a p99
    ],
)
def test_a_step_is_kept_up_when_it_drained_in_time_and_its_p99_is_under_the_limit(
    latency_ms: float, lists: int, drained: float, kept_up: bool
) -> None:
    seen = [ListSample(12.0, latency_ms, "v1")] * lists
    assert judge_step(500.0, 1000, seen, started=10.0, sent=13.0, drained=drained).kept_up is kept_up


@given(seen=samples, outside=samples, started=times, sending_s=st.floats(0.0, 60.0), draining_s=st.floats(0.0, 5.0))
def test_lists_outside_a_step_never_change_it(
    seen: list[ListSample], outside: list[ListSample], started: float, sending_s: float, draining_s: float
) -> None:
    sent = started + sending_s
    drained = sent + draining_s
    stray = [s for s in outside if not started <= s.written_at <= drained]
    span = {"started": started, "sent": sent, "drained": drained}
    assert judge_step(400.0, 10, seen + stray, **span) == judge_step(400.0, 10, seen, **span)


@given(seen=samples, start=times, windows=st.lists(st.tuples(times, times).map(lambda w: (min(w), max(w))), max_size=5))
def test_the_swap_figures_never_count_lists_from_before_the_swap_phase(
    seen: list[ListSample], start: float, windows: list[tuple[float, float]]
) -> None:
    phase = written_between(seen, start)
    assert phase == [s for s in seen if s.written_at >= start]
    steady, inside = split_by_windows(phase, windows)
    assert len(steady) + len(inside) == len(phase)


@given(
    ladder=st.integers(0, 10**6),
    swap=st.integers(0, 10**6),
    totals=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 100))),
)
def test_lost_counts_the_ladder_and_the_swap_phase(ladder: int, swap: int, totals: list[tuple[int, int]]) -> None:
    stats = [Stats(events=e, dlq=d) for e, d in totals]
    assert count_lost(ladder + swap, stats) == max(ladder + swap - sum(e + d for e, d in totals), 0)


def test_a_fleet_that_scored_only_the_swap_phase_lost_the_ladder() -> None:
    stats = [Stats(events=600, dlq=2), Stats(events=398)]
    assert count_lost(1500 + 1000, stats) == 1500
    assert count_lost(1000, stats) == 0


@given(runs=st.lists(offsets, max_size=6))
def test_each_users_last_offset_is_from_the_last_run_that_produced_for_them(
    runs: list[dict[str, tuple[int, int]]],
) -> None:
    last = last_offsets(runs)
    assert set(last) == {u for run in runs for u in run}
    for user, at in last.items():
        assert at == [run[user] for run in runs if user in run][-1]


def swap_bench(ladder: list[LadderStep], sustained_rate: float | None, share: float | None) -> SwapBench:
    return SwapBench(
        ["a", "b"],
        2,
        500.0,
        1,
        30.0,
        30000,
        0,
        0,
        {"a": 45000, "b": 15000},
        BySwap(120.0, 130.0),
        BySwap(900, 100),
        Rss(300.0, 310.0, 310.0, [310.0]),
        Convergence(0.5, 0.5),
        {"a": 600, "b": 400},
        ladder,
        sustained_rate,
        share,
        sum(s.events for s in ladder),
    )


def test_the_ladder_follows_the_existing_keys_in_the_json() -> None:
    doc = json.loads(swap_bench([step(625.0, True)], 625.0, 0.8).to_json())
    assert list(doc)[-5:] == ["ladder", "max_sustained_events_per_s", "share", "ladder_events", "swap_phase"]
    assert doc["ladder"] == [
        {
            "rate": 625.0,
            "p99_ms": 100.0,
            "kept_up": True,
            "events": 1000,
            "drained_s_after_last_send": 0.5,
            "lists": 400,
        }
    ]
    assert (doc["max_sustained_events_per_s"], doc["share"], doc["ladder_events"]) == (625.0, 0.8, 1000)


def test_a_given_rate_reports_no_ladder() -> None:
    given_rate = swap_bench([], None, None)
    # A record built with the fields it had before the ladder: the new ones say there was none.
    before = SwapBench(*(getattr(given_rate, f) for f in list(SwapBench.__dataclass_fields__)[:14]))
    assert before == given_rate
    assert (before.ladder, before.max_sustained_events_per_s, before.share, before.ladder_events) == ([], None, None, 0)
    assert before.swap_phase is None
    assert "ladder" not in format_swap(given_rate)


def test_the_table_shows_the_ladder_and_both_event_counts() -> None:
    text = format_swap(swap_bench([step(500.0, True), step(625.0, True), step(781.2, False)], 625.0, 0.8))
    assert "500.0 events/s (80% of the 625.0 events/s they sustained on the ladder)" in text
    assert "30000 in the swap phase, 3000 on the ladder" in text
    assert sum("781.2" in line and "False" in line for line in text.splitlines()) == 1


def test_the_table_says_whether_the_swap_phase_itself_kept_up() -> None:
    phase = LadderStep(400.0, 10803.0, False, 9, 3.1, 9)
    behind = replace(swap_bench([step(500.0, True)], 500.0, 0.8), swap_phase=phase)
    assert "swap phase as a ladder step: p99 10803.0 ms, lag gone 3.1s after the last send, kept up: False" in (
        format_swap(behind)
    )


def test_without_rate_the_command_climbs_a_ladder_first() -> None:
    parse = build_parser().parse_args
    args = parse(["bench", "swap", "--models", "a", "b"])
    assert (args.rate, args.share, args.ladder_events, args.ladder_start, args.ladder_steps) == (
        None,
        0.8,
        None,
        800.0,
        8,
    )
    assert parse(["bench", "swap", "--models", "a", "b", "--rate", "762"]).rate == 762.0
    assert parse(["bench", "swap", "--models", "a", "b"]).models == [Path("a"), Path("b")]
