"""`bench stream`'s phases on the real Kafka and Redis, a small shop and the tiny model: a backlog and a
live rate each lose nothing, leave every user's list at their last event, and say what CPU they had."""

from pathlib import Path

import pytest

from rankstream.bench.stream import run_phase
from rankstream.data.live_replay import seeded
from rankstream.data.prepare import Split, prepare
from rankstream.deploy import stack as local_stack
from rankstream.ops.load import split_events
from rankstream.stream.ranker import Ranker
from rankstream.stream.redis_client import connect_from_settings
from rankstream.stream.settings import Settings
from tests.integration.test_tables import shop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_a_backlog_and_a_live_rate_lose_nothing_and_report_their_cpu(
    stack: local_stack.StackInfo, tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    prepared = prepare(shop(tmp_path / "src"), data, Split("2024-01-29", "2024-02-12"))
    # A database of its own: each phase flushes the one it runs in.
    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/6"
    base = Settings(kafka_bootstrap=stack.bootstrap, redis_url=redis_url, top_k=5, candidates=10)
    ranker = Ranker.load(tiny_model, threads=1, batch_size=base.score_batch_size)
    client = connect_from_settings(base)
    tables = (prepared.catalog, seeded(prepared, 4), None)
    events = split_events(data, "test", 300)
    try:
        backlog = await run_phase("max", base, ranker, client, tables, events, None)
        live = await run_phase("step", base, ranker, client, tables, events, 300.0)
    finally:
        await client.aclose()
    for phase in (backlog, live):
        assert phase.events == 300 and phase.lost == 0 and phase.dlq == 0 and phase.users_not_reflected == 0
        assert phase.events_per_s > 0 and phase.latency_ms.p99 is not None
        cpu = phase.cpu
        assert cpu is not None and cpu.this_process is not None and 0.0 < cpu.this_process <= 1.0
        if cpu.busy is not None:  # Linux
            assert 0.0 < cpu.busy <= 1.0 and cpu.steal is not None
    assert backlog.rate_target is None and live.rate_target == 300.0
