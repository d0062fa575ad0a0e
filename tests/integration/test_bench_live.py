"""`bench live` end to end on the real Kafka and Redis, a small shop and the tiny model: both arms see the
same events at the same time, nothing is lost, every figure is a share, and each arm says what CPU it had."""

from pathlib import Path

import pytest

from rankstream.bench.live import bench_live_on, format_live
from rankstream.data.prepare import Split, prepare
from rankstream.deploy import stack as local_stack
from rankstream.stream.redis_client import connect
from rankstream.stream.settings import Settings
from tests.integration.test_tables import shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_both_arms_score_the_same_events_and_report_their_cpu(
    stack: local_stack.StackInfo, tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    prepare(shop(tmp_path / "src"), data, Split("2024-01-29", "2024-02-12"))
    # A database of its own: each arm flushes the one it runs in.
    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    settings = Settings(
        kafka_bootstrap=stack.bootstrap, redis_url=redis_url, model_dir=tiny_model, top_k=5, candidates=10
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    result = await bench_live_on(settings, data, tiny_model, logs, rate=400.0, limit=400)
    assert result.events == 400 and result.lost == 0
    for arm in (result.frozen, result.live):
        assert arm.lost == 0 and arm.users_not_reflected == 0
        assert 0 < arm.events <= 400 and arm.lists_written > 0
        assert 0.0 <= arm.hit_rate_at_10 <= 1.0 and 0.0 <= arm.ndcg_at_10 <= arm.hit_rate_at_10
        assert arm.cpu is not None and arm.cpu.this_process is not None and 0.0 < arm.cpu.this_process <= 1.0
        if arm.cpu.busy is not None:  # Linux
            assert 0.0 < arm.cpu.busy <= 1.0 and arm.cpu.steal is not None
    assert result.freshness_ms["p99"] is not None
    # The arms ran together, the live one in the next database (6): its replica moved its shares past every
    # event there (the frozen arm's, in 5, were never moved: no replica).
    assert result.arms_run == "together"

    async def offsets(db: int) -> list[int]:
        client = connect(redis_url.rsplit("/", 1)[0] + f"/{db}")
        try:
            return [int(v) for k in await client.keys("rs:lt:*:meta") if (v := await client.hget(k, "offset"))]
        finally:
            await client.aclose()

    live, frozen = await offsets(6), await offsets(5)
    assert len(live) == 4 and sum(o + 1 for o in live) == 400
    assert frozen == [-1] * 4  # as seeded
    assert "cpu busy/steal/scorer" in format_live(result)
