"""`bench chaos` on the real services, short: one of each fault inside 90 s of load at a low rate."""

from pathlib import Path

import pytest

from rankstream.bench.chaos import bench_chaos
from rankstream.bench.chaos_figures import FAULTS, format_chaos
from rankstream.bench.malformed import kinds
from tests.model_builders import tiny_prepared

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(900)
async def test_a_short_chaos_run_loses_nothing_and_dead_letters_every_bad_record(tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    tiny_prepared(tmp_path)  # $home/data
    result = await bench_chaos(
        tmp_path,
        tiny_model,
        minutes=1.5,
        rate=15.0,
        replicas=2,
        seed=1,
        counts=dict.fromkeys(FAULTS, 1),
        bad_records=390,
    )
    print(format_chaos(result))  # the run's figures (pytest -s)
    assert result.faults == dict.fromkeys(FAULTS, 1)
    assert result.events == int(15.0 * 90) and result.users > 10
    assert result.lost == 0 and result.not_reflected == 0
    assert result.bad_records == 390 and result.dlq == result.bad_records and result.dlq_mismatched == 0
    assert set(result.dlq_by_reason) == {reason for reason, _ in kinds("x", 1)}
    assert result.corrupt_served == 0
    assert result.minutes_without_progress_after_recovery == 0
    assert all(p is not None for p in result.p99_ms_by_minute[:-1])
