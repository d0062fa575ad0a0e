import json
from datetime import UTC, datetime, timedelta

import pytest

from rankstream.stream.events import ClickEvent, Rejected, parse_event

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def raw(**fields: object) -> bytes:
    base = {"user_id": "u1", "item_id": "85123A", "ts": "2011-11-01T09:00:00Z", "event": "purchase"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_valid_event_roundtrips() -> None:
    ev = parse_event(raw(extra_field="ignored"), 4096, NOW)
    assert ev == ClickEvent(user_id="u1", item_id="85123A", ts=datetime(2011, 11, 1, 9, tzinfo=UTC), event="purchase")
    assert parse_event(ev.to_bytes(), 4096, NOW) == ev


def test_epoch_ms_and_naive_times_are_utc() -> None:
    assert parse_event(raw(ts=1320138000000), 4096, NOW).ts == datetime(2011, 11, 1, 9, tzinfo=UTC)
    assert parse_event(raw(ts="2011-11-01T09:00:00"), 4096, NOW).ts.tzinfo is not None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"x" * 5000, "too_large"),
        (b"\xff\xfe", "invalid_utf8"),
        (b'{"user_id": ', "invalid_json"),
        (b"[1]", "not_an_object"),
        (raw(user_id=None), "invalid_user_id"),
        (raw(item_id=7), "invalid_item_id"),
        (raw(user_id=""), "invalid_user_id"),
        (raw(ts=-1), "invalid_ts"),
        (raw(ts=True), "invalid_ts"),
        (raw(ts="soon"), "invalid_ts"),
        (raw(event="hover"), "invalid_event"),
        (raw(ts=(NOW + timedelta(days=1)).isoformat()), "ts_in_future"),
    ],
)
def test_rejections_carry_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_event(value, 4096, NOW)
    assert info.value.reason == reason
