"""The demo's live-tables process: how far its shares got against the topic, and how it is stopped."""

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from rankstream.deploy.errors import StackError
from rankstream.ops.demo import _stop, _wait_for_tables, tables_progress
from rankstream.stream.settings import load_settings


def test_a_share_at_its_partitions_last_offset_is_caught_up() -> None:
    # Partition 1 holds nothing: its share, seeded only, is at its end too.
    assert tables_progress({0: 9, 1: -1}, {0: (0, 10), 1: (0, 0)}) == (10, True)


def test_seeded_shares_have_read_nothing() -> None:
    assert tables_progress({0: -1, 1: -1}, {0: (0, 4), 1: (0, 3)}) == (0, False)


def test_a_share_short_of_its_end_counts_what_it_read() -> None:
    assert tables_progress({0: 9, 1: 1}, {0: (0, 10), 1: (0, 5)}) == (12, False)


def test_records_gone_from_the_topic_are_not_counted() -> None:
    # Retention removed offsets 0..99: a seeded share starts at 100 (the consumer resets to the earliest).
    assert tables_progress({0: 104}, {0: (100, 105)}) == (5, True)
    assert tables_progress({0: -1}, {0: (100, 105)}) == (0, False)


def test_a_missing_share_counts_as_seeded_only() -> None:
    assert tables_progress({}, {0: (0, 2)}) == (0, False)


def _sleeper(*, ignore_term: bool) -> subprocess.Popen[bytes]:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # the handler is set by now
    return proc


def test_stop_sends_sigterm() -> None:
    with _sleeper(ignore_term=False) as proc:
        assert _stop(proc) == -15


def test_stop_kills_what_outlives_its_grace() -> None:
    with _sleeper(ignore_term=True) as proc:
        assert _stop(proc, grace_s=0.5) == -9


def test_waiting_for_the_tables_stops_when_the_job_exited(tmp_path: Path) -> None:
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    done.wait()
    log = tmp_path / "demo-tables.log"
    # Nothing listens on these ports: the exit is seen before any service is asked.
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(StackError, match=r"exited early with 2; see .*demo-tables\.log"):
        asyncio.run(_wait_for_tables(settings, done, log))


def test_new_items_copy_best_sellers_and_one_seldom_clicked_item() -> None:
    from datetime import UTC, datetime

    from rankstream.ops.demo_catalog import sources
    from rankstream.stream.events import ClickEvent

    at = datetime(2011, 12, 1, tzinfo=UTC)
    clicks = ["b", "a", "c", "b", "untitled", "untitled", "untitled", "a", "d", "e", "e"]
    evs = [ClickEvent(user_id=f"u{k}", item_id=it, ts=at) for k, it in enumerate(clicks)]
    catalog = {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}
    # Most clicked first (ties by id), then the least clicked; an item without a title is never copied.
    assert sources(evs, catalog, 3) == [("a", 2), ("b", 2), ("d", 1)]
    assert sources(evs, catalog, 1) == [("d", 1)]
    assert sources(evs, catalog, 10) == [("a", 2), ("b", 2), ("e", 2), ("c", 1), ("d", 1)]
    assert sources(evs, catalog, 0) == []
