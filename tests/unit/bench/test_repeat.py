"""`bench stream --repeat N`: the worst of the runs, and the JSON a script reads."""

import json

import pytest

from rankstream.bench.repeat import format_repeated, lost_in, worst_of
from rankstream.bench.results import RepeatedStreamBench
from rankstream.cli.main import build_parser
from tests.unit.bench.builders import stream_bench


def test_worst_takes_each_figure_from_the_run_worst_at_it() -> None:
    runs = [
        stream_bench(900.0, p99_at_share=120.0, lost=(0, 1, 0)),
        stream_bench(700.0, p99_at_share=90.0),
        stream_bench(800.0, p99_at_share=300.0, lost=(2, 0, 3)),
    ]
    worst = worst_of(runs)
    assert (worst.max_sustained_events_per_s, worst.p99_ms_at_share, worst.lost) == (700.0, 300.0, 5)


def test_a_run_that_sustained_no_rate_is_the_worst() -> None:
    assert worst_of([stream_bench(900.0), stream_bench(None)]).max_sustained_events_per_s is None


def test_a_run_without_a_p99_does_not_hide_the_others() -> None:
    worst = worst_of([stream_bench(p99_at_share=None), stream_bench(p99_at_share=80.0)])
    assert worst.p99_ms_at_share == 80.0
    assert worst_of([stream_bench(p99_at_share=None)]).p99_ms_at_share is None


def test_worst_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        worst_of([])


def test_lost_counts_every_phase_of_a_run() -> None:
    assert lost_in(stream_bench(lost=(1, 2, 4))) == 7


def test_repeated_json_is_runs_and_worst() -> None:
    runs = [stream_bench(900.0, p99_at_share=120.0), stream_bench(700.0, p99_at_share=90.0, lost=(0, 0, 1))]
    doc = json.loads(RepeatedStreamBench(runs, worst_of(runs)).to_json())
    assert list(doc) == ["runs", "worst"]
    assert doc["runs"] == [json.loads(r.to_json()) for r in runs]
    assert doc["worst"] == {"max_sustained_events_per_s": 700.0, "p99_ms_at_share": 120.0, "lost": 1}


def test_table_shows_each_run_and_the_worst() -> None:
    runs = [stream_bench(900.0), stream_bench(700.0)]
    text = format_repeated(RepeatedStreamBench(runs, worst_of(runs)))
    assert text.count("maximum sustained:") == 2
    last = text.splitlines()[-1].split()
    assert last[:2] == ["worst", "700.0"]


def test_repeat_flag_is_parsed_and_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["bench", "stream", "--repeat", "3"]).repeat == 3
    assert parser.parse_args(["bench", "stream"]).repeat is None
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "stream", "--repeat", "0"])
    assert "must be 1 or more" in capsys.readouterr().err
