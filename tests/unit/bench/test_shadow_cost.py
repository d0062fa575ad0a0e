import json
from dataclasses import replace

from rankstream.bench.stream import format_bench, shadow_cost

from .builders import phase, stream_bench


def test_the_shadow_phase_is_compared_with_the_mean_of_the_phases_around_it() -> None:
    cost = shadow_cost(0.05, phase(4.0, p99=100.0), phase(4.0, p99=108.0), phase(4.0, p99=80.0), 120, 7)
    assert cost.p99_ratio == 1.2
    assert (cost.shadow_scored_users, cost.shadow_skipped_users) == (120, 7)


def test_without_a_p99_on_either_side_there_is_no_ratio() -> None:
    assert shadow_cost(0.05, phase(4.0, p99=None), phase(4.0), phase(4.0, p99=None), 0, 0).p99_ratio is None
    assert shadow_cost(0.05, phase(4.0), phase(4.0, p99=None), phase(4.0), 0, 0).p99_ratio is None


def test_the_shadow_phases_are_printed_and_in_the_json() -> None:
    cost = shadow_cost(0.05, phase(4.0, p99=100.0), phase(4.0, p99=105.0), phase(4.0, p99=100.0), 12, 3)
    result = replace(stream_bench(), shadow=cost)
    text = format_bench(result)
    assert "+shadow 5%" in text and "80% again" in text and "x1.05" in text
    assert json.loads(result.to_json())["shadow"]["p99_ratio"] == 1.05
    assert json.loads(stream_bench().to_json())["shadow"] is None
