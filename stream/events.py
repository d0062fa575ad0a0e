"""The click event contract and its validation. Every rejection carries a short machine-readable reason.

`parse_event` is total: whatever bytes a producer sends, it returns a ClickEvent or raises Rejected,
so one record can never stop a partition (see docs/dead-letters.md for every reason).
"""

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventType = Literal["click", "view", "add_to_cart", "purchase"]
M = TypeVar("M", bound=BaseModel)

# Clocks drift; an event a little ahead of ours is still believable, one a day ahead is not.
FUTURE_SLACK = timedelta(minutes=5)
# No shop's click log starts before the web did; an older time is a unit mistake (seconds read as
# milliseconds, a zero date) and would age every table the event touches.
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
# Epoch milliseconds beyond any datetime Python can hold; checked before conversion, which overflows.
# Unicode categories Cc (C0, DEL, C1) and Cs (surrogates), as one character class.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MAX_EPOCH_MS = (datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000


def printable(v: str) -> str:
    """`v`, or ValueError if it holds a control character or a lone surrogate."""
    if (bad := _UNPRINTABLE.search(v)) is not None:
        raise ValueError(f"must not contain control characters or lone surrogates (U+{ord(bad.group()):04X})")
    return v


def no_comma(v: str) -> str:
    """`v`, or ValueError if it holds a comma: histories and neighbour lists are stored comma-joined."""
    if "," in v:
        raise ValueError("must not contain a comma")
    return v


class ClickEvent(BaseModel):
    """One user interaction. Unknown fields are ignored so producers can add fields first."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    ts: datetime
    event: EventType = "click"

    @field_validator("user_id", "item_id")
    @classmethod
    def _printable(cls, v: str) -> str:
        # Ids become Redis keys and Kafka headers: a control character or a lone surrogate (valid
        # JSON, not encodable as UTF-8) would break the write of a whole batch.
        return printable(v)

    @field_validator("item_id")
    @classmethod
    def _no_comma(cls, v: str) -> str:
        return no_comma(v)

    @field_validator("ts", mode="before")
    @classmethod
    def _epoch_ms(cls, v: object) -> object:
        # Epoch milliseconds, as Kafka timestamps are; bool is an int subclass and is never a time.
        if isinstance(v, bool):
            raise ValueError("ts must be RFC 3339 text or epoch milliseconds")
        if isinstance(v, int | float):
            if not math.isfinite(v) or not 0 <= v <= _MAX_EPOCH_MS:
                raise ValueError("ts in epoch milliseconds must be a finite number from 0 to year 9999")
            return datetime.fromtimestamp(v / 1000, UTC)
        return v

    @field_validator("ts")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts.isoformat(), "event": self.event}
        ).encode()


class Rejected(Exception):
    """An event that cannot be scored; `reason` is the DLQ's `reason` header."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def internal_error(exc: BaseException) -> Rejected:
    """The rejection for a failure nobody planned for: the exception's type and message are the detail."""
    return Rejected("internal_error", f"{type(exc).__name__}: {exc}"[:500])


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads with any option builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_event(value: bytes | None, max_bytes: int, now: datetime | None = None) -> ClickEvent:
    """Decode and validate one Kafka record value, or raise Rejected with the reason. Raises nothing else."""
    try:
        return _parse(value, max_bytes, now or datetime.now(UTC))
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: any record ends as an event or a rejection
        raise internal_error(exc) from exc


def _parse(value: bytes | None, max_bytes: int, now: datetime) -> ClickEvent:
    if value is None:
        raise Rejected("empty", "record has no value")
    if len(value) > max_bytes:
        raise Rejected("too_large", f"{len(value)} bytes > {max_bytes}")
    event = validated(ClickEvent, json_object(value), "event")
    if event.ts > now + FUTURE_SLACK:
        raise Rejected("ts_in_future", event.ts.isoformat())
    if event.ts < EARLIEST_TS:
        raise Rejected("ts_too_old", f"{event.ts.isoformat()} is before {EARLIEST_TS.date()}")
    return event


def json_object(value: bytes) -> dict[str, object]:
    """A record value as a JSON object, or Rejected: invalid_utf8, invalid_json, not_an_object."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_utf8", str(exc)) from None
    try:
        raw = _DECODER.decode(text)
    except RecursionError:
        raise Rejected("invalid_json", "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers beyond int's digit limit
        raise Rejected("invalid_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", type(raw).__name__)
    return raw


def validated(model: type[M], raw: dict[str, object], what: str) -> M:
    """`raw` as a `model`, or Rejected `invalid_<field>` naming the first field at fault (`what`: the whole)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or what
        raise Rejected(f"invalid_{field}", err["msg"]) from None
