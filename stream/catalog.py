"""The catalog record contract: what the `catalog` topic carries, and its validation.

Key = the item id (UTF-8). Value = JSON `{"item_id": str, "title": str, "category": str|null,
"price": float|null}` (unknown fields ignored), or null: a tombstone that removes the item the key names
(and lets a compacted topic forget it). `parse_catalog` is total like `events.parse_event`: whatever a
producer sends, it returns a CatalogItem or a Removal, or raises Rejected with a stable reason
(docs/dead-letters.md lists them).
"""

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The click events' rule for ids: an item id valid on one topic is valid on the other.
from rankstream.stream.events import (
    _UNPRINTABLE,
    Rejected,
    internal_error,
    json_object,
    no_comma,
    printable,
    validated,
)

ITEM_ID_MAX = 128  # as ClickEvent.item_id
TITLE_MAX = 512
CATEGORY_MAX = 128


class CatalogItem(BaseModel):
    """One item as the catalog topic announces it: put (add or replace) under its id."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    item_id: str = Field(min_length=1, max_length=ITEM_ID_MAX)
    title: str = Field(min_length=1, max_length=TITLE_MAX)
    category: str | None = Field(default=None, max_length=CATEGORY_MAX)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("item_id", "title", "category")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # Ids become Redis fields and stream entries, titles go to the tokenizer and to frontends: a
        # control character or a lone surrogate (valid JSON, not encodable as UTF-8) breaks either.
        return None if v is None else printable(v)

    @field_validator("item_id")
    @classmethod
    def _no_comma(cls, v: str) -> str:
        return no_comma(v)

    @field_validator("price", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        # "12.5" or true would be coerced by a lax float; a price is a JSON number or null.
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError("must be a JSON number or null")
        if isinstance(v, int) and abs(v) > 1e300:  # float(v) of a huge int overflows
            raise ValueError("must be a finite number")
        return v

    def key(self) -> bytes:
        return self.item_id.encode()

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"item_id": self.item_id, "title": self.title, "category": self.category, "price": self.price}
        ).encode()


@dataclass(frozen=True)
class Removal:
    """A tombstone: the item leaves the catalog."""

    item_id: str


def parse_catalog(key: bytes | None, value: bytes | None, max_bytes: int) -> CatalogItem | Removal:
    """Decode and validate one catalog record, or raise Rejected with the reason. Raises nothing else.

    Args:
        key: the record key, the item id in UTF-8.
        value: the JSON document, or None for a tombstone.
        max_bytes: larger records (key and value together) are rejected as `too_large`.
    """
    try:
        return _parse(key, value, max_bytes)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: any record ends as an item, a removal or a rejection
        raise internal_error(exc) from exc


def _item_id(key: bytes | None) -> str:
    """The key as an item id, by the same rules as the value's `item_id`."""
    if key is None:
        raise Rejected("missing_key", "a catalog record is keyed by its item id")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_key", f"not UTF-8: {exc}") from None
    problem = ""
    if not text.strip() or len(text) > ITEM_ID_MAX or text != text.strip():
        problem = f"an item id is 1 to {ITEM_ID_MAX} characters, no surrounding spaces"
    elif "," in text or _UNPRINTABLE.search(text):
        problem = "an item id has no comma and no control characters"
    if problem:
        raise Rejected("invalid_key", f"{problem}: {text[:60]!r}")
    return text


def _parse(key: bytes | None, value: bytes | None, max_bytes: int) -> CatalogItem | Removal:
    size = len(key or b"") + len(value or b"")
    if size > max_bytes:
        raise Rejected("too_large", f"{size} bytes > {max_bytes}")
    item_id = _item_id(key)
    if value is None:
        return Removal(item_id)
    item = validated(CatalogItem, json_object(value), "item")
    if item.item_id != item_id:
        raise Rejected("key_mismatch", f"key {item_id[:60]!r} names another item than item_id {item.item_id[:60]!r}")
    return item
