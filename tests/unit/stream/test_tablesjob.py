"""The tables job's fetch options: batched fetches by default, Kafka's own behaviour at 0."""

import pytest
from pydantic import ValidationError

from rankstream.stream.settings import Settings
from rankstream.stream.tablesjob import fetch_options


def test_fetches_wait_for_records_to_pile_up_by_default() -> None:
    opts = fetch_options(Settings().tables_fetch_wait_ms)
    assert opts["fetch_max_wait_ms"] == 50
    assert opts["fetch_min_bytes"] >= 1 << 20  # so the wait, not the size, ends a fetch


def test_zero_leaves_kafkas_defaults() -> None:
    assert fetch_options(Settings(tables_fetch_wait_ms=0).tables_fetch_wait_ms) == {}


@pytest.mark.parametrize("wait", [-1, 5_001])
def test_out_of_range_is_refused(wait: int) -> None:
    with pytest.raises(ValidationError, match="tables_fetch_wait_ms"):
        Settings(tables_fetch_wait_ms=wait)
