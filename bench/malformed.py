"""Malformed click records for the chaos run, each with the reason the scorer dead-letters it for.

Every kind is wrong in one way only, so its reason is the one `stream.events.parse_event` (and the
scorer's catalog check, for `unknown_item`) gives: the chaos run compares the DLQ with these reasons.
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

UNKNOWN_ITEM_PREFIX = "chaos-unknown-"
_GOOD_TS = "2011-11-01T10:00:00Z"


@dataclass(frozen=True)
class BadRecord:
    """One record to produce as is, and the DLQ reason it must end under."""

    reason: str
    key: bytes
    value: bytes | None


Maker = Callable[[random.Random], bytes | None]


def kinds(item: str, max_bytes: int) -> list[tuple[str, Maker]]:
    """(reason, maker of a value) for every kind; `item` is a catalog item, so a record that parses is
    refused for what is wrong with it and not for its item; `max_bytes` is the scorer's
    RANKSTREAM_MAX_EVENT_BYTES."""
    good = {"user_id": "chaos-bad", "item_id": item, "ts": _GOOD_TS, "event": "click"}

    def with_(**fields: object) -> bytes:
        return json.dumps({**good, **fields}).encode()

    def without(name: str) -> bytes:
        return json.dumps({k: v for k, v in good.items() if k != name}).encode()

    def raw_ts(text: str) -> bytes:
        return with_(ts=0).replace(b'"ts": 0', b'"ts": ' + text.encode())

    return [
        ("empty", lambda rng: None),
        ("too_large", lambda rng: with_(padding="x" * (max_bytes + rng.randrange(1, 4096)))),
        (
            "invalid_utf8",
            lambda rng: b'{"user_id": "' + rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80"]) + b'"}',
        ),
        ("invalid_json", lambda rng: json.dumps(good).encode()[: rng.randrange(1, 40)]),
        ("invalid_json", lambda rng: raw_ts(rng.choice(["NaN", "Infinity", "-Infinity"]))),
        ("not_an_object", lambda rng: rng.choice([b"[1, 2, 3]", b"42", b'"click"', b"null"])),
        (
            "invalid_user_id",
            lambda rng: with_(user_id=rng.choice([rng.randrange(10**6), "", " ", "x" * 129, "\u0000x"])),
        ),
        ("invalid_item_id", lambda rng: rng.choice([without("item_id"), with_(item_id=f"{item},{item}")])),
        ("invalid_ts", lambda rng: rng.choice([with_(ts="soon"), with_(ts=True), with_(ts=-5), raw_ts("1e999")])),
        ("invalid_event", lambda rng: with_(event=rng.choice(["hover", None, 3]))),
        ("ts_in_future", lambda rng: with_(ts=f"{rng.randrange(2200, 9000)}-01-01T00:00:00Z")),
        ("ts_too_old", lambda rng: with_(ts=rng.choice(["1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z", 0]))),
        ("unknown_item", lambda rng: with_(item_id=f"{UNKNOWN_ITEM_PREFIX}{rng.randrange(10**6)}")),
    ]


def malformed(rng: random.Random, n: int, item: str, max_bytes: int) -> list[BadRecord]:
    """`n` bad records, the kinds in turn (so any 13 in a row hold every kind), each keyed on its own."""
    made = kinds(item, max_bytes)
    out = []
    for i in range(n):
        reason, make = made[i % len(made)]
        out.append(BadRecord(reason, f"chaos-bad-{i}".encode(), make(rng)))
    return out
