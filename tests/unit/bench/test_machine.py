"""A phase's CPU use: /proc/stat parsed whatever it holds, shares that add up, and this process's own."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.bench.machine import PROC_STAT, CpuMeter, cpu_use, parse_stat

LINE = "cpu  7596261 781606 365504 4069936 26232 0 79297 69446 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n"


def test_the_aggregate_line_is_read_and_not_a_core_line() -> None:
    assert parse_stat(LINE) == (7596261, 781606, 365504, 4069936, 26232, 0, 79297, 69446)
    assert parse_stat("cpu0 1 2 3 4 5 6 7 8\n") is None
    assert parse_stat("cpu 1 2 3 4\n") is None  # an old kernel's shorter line


@given(st.text())
def test_any_text_parses_to_eight_counters_or_none(text: str) -> None:
    got = parse_stat(text)
    assert got is None or (len(got) == 8 and all(isinstance(x, int) and x >= 0 for x in got))


@given(st.lists(st.integers(0, 10**6), min_size=8, max_size=8), st.lists(st.integers(0, 10**6), min_size=8, max_size=8))
def test_shares_are_shares(before: list[int], step: list[int]) -> None:
    after = tuple(b + s for b, s in zip(before, step, strict=True))
    use = cpu_use(tuple(before), after, 1.0, 2.0, 2)
    if sum(step) == 0:
        assert use.busy is None and use.steal is None
    else:
        assert use.busy is not None and use.steal is not None
        assert 0.0 <= use.busy <= 1.0 and 0.0 <= use.steal <= 1.0 and use.busy + use.steal <= 1.0 + 1e-9
    assert use.this_process == 0.25


def test_busy_is_what_ran_and_steal_what_other_guests_took() -> None:
    # user nice system idle iowait irq softirq steal
    step = (30, 5, 10, 40, 5, 2, 3, 5)
    use = cpu_use((100,) * 8, tuple(100 + s for s in step), 0.0, 1.0, 2)
    assert (use.busy, use.steal) == (0.5, 0.05)


def test_counters_that_went_back_say_nothing() -> None:
    # A counter that wrapped or a machine that was swapped under the process: no share is better than a wrong one.
    use = cpu_use((10,) * 8, (9,) + (20,) * 7, 0.0, 1.0, 1)
    assert use.busy is None and use.steal is None


def test_a_busy_phase_shows_in_this_process_and_the_machine() -> None:
    if parse_stat(PROC_STAT.read_text()) is None:
        pytest.skip("no /proc/stat here")
    meter = CpuMeter()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    use = meter.stop()
    # One thread spinning for the whole phase: a whole core, within what a shared machine lends it.
    assert use.this_process is not None and use.this_process * use.cores > 0.5
    assert use.busy is not None and use.busy >= use.this_process - 0.1


def test_the_tables_print_busy_steal_and_own() -> None:
    assert cpu_use((0,) * 8, (30, 5, 10, 40, 5, 2, 3, 5), 0.5, 1.0, 2).brief() == "0.5/0.05/0.25"
