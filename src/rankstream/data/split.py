"""Time-based train / valid / test split.

Recommendations are always made about the future, so the split is by time, never random: a model sees
only what happened before the period it is judged on. Boundaries are UTC instants; a date means its
midnight UTC.

A data set of unknown period is split by `SplitByDays`: test = its last whole UTC days, valid = the
days just before, train = everything earlier (docs/data.md, "The time split").
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd

from rankstream.stream.errors import ConfigError


def _instant(value: date | datetime | str, name: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"split {name}={value!r} is not an ISO-8601 date or time") from exc
    if not isinstance(value, datetime):  # a plain date
        value = datetime(value.year, value.month, value.day)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Split:
    """train: ts < train_end; valid: train_end <= ts < valid_end; test: ts >= valid_end."""

    train_end: datetime
    valid_end: datetime

    def __init__(self, train_end: date | datetime | str, valid_end: date | datetime | str) -> None:
        # Accept dates and ISO text for convenience; always store aware UTC datetimes.
        object.__setattr__(self, "train_end", _instant(train_end, "train_end"))
        object.__setattr__(self, "valid_end", _instant(valid_end, "valid_end"))
        if self.train_end >= self.valid_end:
            raise ConfigError(
                f"split train_end ({self.train_end.isoformat()}) must be before valid_end "
                f"({self.valid_end.isoformat()}): train is ts < train_end, valid is "
                "train_end <= ts < valid_end, test is ts >= valid_end"
            )

    def to_dict(self) -> dict[str, str]:
        return {"train_end": self.train_end.isoformat(), "valid_end": self.valid_end.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Split":
        return cls(d["train_end"], d["valid_end"])


# Online Retail's split (docs/data.md): test = the data's last weeks, the pre-Christmas peak a model
# would actually serve; valid = the month just before it, for model and checkpoint choice; train =
# everything earlier, for co-visitation and fine-tuning. Whole months keep the boundaries easy to
# reason about.
DEFAULT_SPLIT = Split(date(2011, 10, 1), date(2011, 11, 1))


def split_frame(df: pd.DataFrame, split: Split = DEFAULT_SPLIT) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cut a frame with a UTC `ts` column into (train, valid, test) by the split's boundaries."""
    if "ts" not in df.columns:
        raise ConfigError("split_frame needs a frame with a ts column (see rankstream.data.formats)")
    ts = df["ts"]
    train_end = pd.Timestamp(split.train_end)
    valid_end = pd.Timestamp(split.valid_end)
    in_train = ts < train_end
    in_test = ts >= valid_end
    return df[in_train], df[~in_train & ~in_test], df[in_test]


# The share of the data's days that `SplitByDays` gives test, and again valid, when no count is given.
DEFAULT_SHARE = 0.1


@dataclass(frozen=True)
class SplitByDays:
    """A split chosen from the data: test = its last `test_days` whole UTC days, valid = the `valid_days` before.

    The data covers the UTC days from its first event's day through its last event's day; a count left
    None is a tenth of those days, rounded half up, at least one. Boundaries are UTC midnights.
    """

    test_days: int | None = None
    valid_days: int | None = None

    def __post_init__(self) -> None:
        for name, days in (("test_days", self.test_days), ("valid_days", self.valid_days)):
            if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
                raise ConfigError(f"split {name}={days!r} must be a whole number of days, 1 or more")

    def to_dict(self) -> dict[str, int | None]:
        return {"test_days": self.test_days, "valid_days": self.valid_days}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SplitByDays":
        return cls(d.get("test_days"), d.get("valid_days"))

    def resolve(self, ts: pd.Series) -> Split:
        """The `Split` this rule picks for UTC timestamps `ts` (a frame's `ts` column)."""
        if ts.empty:
            raise ConfigError("cannot choose a split for data without interactions; the interactions file is empty")
        first = ts.min().floor("D").to_pydatetime()
        end = ts.max().floor("D").to_pydatetime() + timedelta(days=1)  # the midnight after the last day
        days = (end - first).days
        default = max(1, int(days * DEFAULT_SHARE + 0.5))
        test_days = self.test_days if self.test_days is not None else default
        valid_days = self.valid_days if self.valid_days is not None else default
        valid_end = end - timedelta(days=test_days)
        train_end = valid_end - timedelta(days=valid_days)
        if train_end <= first:
            raise ConfigError(
                f"the data covers {days} day(s) ({first:%Y-%m-%d} to {end - timedelta(days=1):%Y-%m-%d}); "
                f"{test_days} test and {valid_days} valid day(s) leave none for train: pass fewer "
                "--test-days/--valid-days, or --train-end and --valid-end dates inside the data"
            )
        return Split(train_end, valid_end)
