"""The click event contract and its validation. Every rejection carries a short machine-readable reason."""

import json
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventType = Literal["click", "view", "add_to_cart", "purchase"]

# Clocks drift; an event a little ahead of ours is still believable, one a day ahead is not.
_FUTURE_SLACK = timedelta(minutes=5)


class ClickEvent(BaseModel):
    """One user interaction. Unknown fields are ignored so producers can add fields first."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    ts: datetime
    event: EventType = "click"

    @field_validator("ts", mode="before")
    @classmethod
    def _epoch_ms(cls, v: object) -> object:
        # Epoch milliseconds, as Kafka timestamps are; bool is an int subclass and is never a time.
        if isinstance(v, bool):
            raise ValueError("ts must be RFC 3339 text or epoch milliseconds")
        if isinstance(v, int | float):
            if v < 0:
                raise ValueError("ts is negative")
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


def parse_event(value: bytes | None, max_bytes: int, now: datetime | None = None) -> ClickEvent:
    """Decode and validate one Kafka record value, or raise Rejected with the reason."""
    if value is None:
        raise Rejected("empty", "record has no value")
    if len(value) > max_bytes:
        raise Rejected("too_large", f"{len(value)} bytes > {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_utf8", str(exc)) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("invalid_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", type(raw).__name__)
    try:
        event = ClickEvent.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "event"
        raise Rejected(f"invalid_{field}", err["msg"]) from None
    if event.ts > (now or datetime.now(UTC)) + _FUTURE_SLACK:
        raise Rejected("ts_in_future", event.ts.isoformat())
    return event
