"""Time-based train / valid / test split.

Recommendations are always made about the future, so the split is by time, never random: a model sees
only what happened before the period it is judged on. Boundaries are UTC instants; a date means its
midnight UTC.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime
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
