"""`bench catalog`'s figures: percentiles of the measured times and the printed summary."""

import dataclasses

from rankstream.bench.catalog import CatalogBench, Times, format_catalog, times_of


def test_times_of_nothing_are_unknown_not_zero() -> None:
    assert times_of([]) == Times(None, None, None)


def test_times_follow_numpy() -> None:
    p = times_of([float(v) for v in range(1, 101)])
    assert p.p50 == 50.5 and p.p99 == 99.0 and p.max == 100.0


def test_the_summary_and_json_carry_every_figure() -> None:
    r = CatalogBench(
        items=100,
        rate=300.0,
        replicas=2,
        text_candidates=20,
        merge="",
        encoder="e1",
        model="m1",
        publish_to_stored_ms=Times(40.0, 90.0, 95.0),
        publish_to_servable_ms=Times(300.0, 610.0, 700.0),
        never_servable=1,
        probes=100,
        probes_listing_new=37,
        events=1000,
        dlq=0,
        users_not_reflected=0,
    )
    text = format_catalog(r)
    assert "p50 300.0 / p99 610.0 / max 700.0" in text and "never: 1" in text and "37 / 100" in text
    assert "20 text candidates" in text
    doc = r.to_dict()
    assert doc["items"] == 100 and doc["publish_to_servable_ms"]["p99"] == 610.0
    merged = format_catalog(dataclasses.replace(r, text_candidates=0, merge="m7"))
    assert "learned merge m7" in merged and "text candidates" not in merged
