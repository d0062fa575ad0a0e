"""The time split: boundaries, validation, serialisation."""

from datetime import UTC, date, datetime, timedelta, timezone

import pandas as pd
import pytest

from rankstream.data.split import DEFAULT_SPLIT, Split, split_frame
from rankstream.stream.errors import ConfigError


def _frame(*stamps: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": "u",
            "item_id": [str(i) for i in range(len(stamps))],
            "ts": pd.to_datetime(list(stamps), utc=True, format="ISO8601"),
        }
    )


def test_boundaries_go_to_the_later_part() -> None:
    df = _frame(
        "2011-09-30T23:59:59.999999Z",  # train
        "2011-10-01T00:00:00Z",  # exactly train_end: valid
        "2011-10-31T23:59:59Z",  # valid
        "2011-11-01T00:00:00Z",  # exactly valid_end: test
        "2011-12-09T12:00:00Z",  # test
    )
    train, valid, test = split_frame(df, DEFAULT_SPLIT)
    assert list(train["item_id"]) == ["0"]
    assert list(valid["item_id"]) == ["1", "2"]
    assert list(test["item_id"]) == ["3", "4"]


def test_default_split_is_october_valid_november_on_test() -> None:
    assert DEFAULT_SPLIT.train_end == datetime(2011, 10, 1, tzinfo=UTC)
    assert DEFAULT_SPLIT.valid_end == datetime(2011, 11, 1, tzinfo=UTC)


def test_dates_text_and_zones_normalise_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    split = Split("2024-01-01", datetime(2024, 2, 1, 1, 0, tzinfo=cet))
    assert split.train_end == datetime(2024, 1, 1, tzinfo=UTC)
    assert split.valid_end == datetime(2024, 2, 1, tzinfo=UTC)
    assert Split(date(2024, 1, 1), "2024-02-01T00:00:00+00:00") == split
    assert Split.from_dict(split.to_dict()) == split


@pytest.mark.parametrize("ends", [("2024-02-01", "2024-01-01"), ("2024-01-01", "2024-01-01")])
def test_train_end_must_come_before_valid_end(ends: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="train_end .* must be before valid_end"):
        Split(*ends)


def test_unparseable_boundary_says_which() -> None:
    with pytest.raises(ConfigError, match="valid_end='soon' is not an ISO-8601"):
        Split("2024-01-01", "soon")


def test_split_is_a_partition() -> None:
    stamps = pd.date_range("2011-09-15", "2011-11-15", freq="7h", tz="UTC")
    df = pd.DataFrame({"user_id": "u", "item_id": "i", "ts": stamps})
    parts = split_frame(df, DEFAULT_SPLIT)
    assert sum(len(p) for p in parts) == len(df)
    assert parts[0]["ts"].max() < parts[1]["ts"].min() <= parts[1]["ts"].max() < parts[2]["ts"].min()
