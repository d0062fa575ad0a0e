import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstream.stream.catalog import ITEM_ID_MAX, TITLE_MAX, CatalogItem, Rejected, Removal, parse_catalog

MAX = 16_384


def doc(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"item_id": "85123A", "title": "White hanging heart T-light holder", "price": 2.55}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def raw(**fields: object) -> bytes:
    return json.dumps(doc(**fields)).encode()


def test_a_valid_record_round_trips() -> None:
    item = parse_catalog(b"85123A", raw(category="home", extra="ignored"), MAX)
    assert item == CatalogItem(
        item_id="85123A", title="White hanging heart T-light holder", category="home", price=2.55
    )
    assert isinstance(item, CatalogItem)
    assert parse_catalog(item.key(), item.to_bytes(), MAX) == item


def test_a_tombstone_removes_the_item_its_key_names() -> None:
    assert parse_catalog(b"85123A", None, MAX) == Removal("85123A")


def test_titles_are_stripped_and_optional_fields_may_be_null() -> None:
    item = parse_catalog(
        b"a", json.dumps({"item_id": "a", "title": "  mug  ", "category": None, "price": None}).encode(), MAX
    )
    assert item == CatalogItem(item_id="a", title="mug")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, raw(), "missing_key"),
        (None, None, "missing_key"),
        (b"\xff", raw(), "invalid_key"),
        (b"", None, "invalid_key"),
        (b"a,b", None, "invalid_key"),
        (b"a\x00", None, "invalid_key"),
        (b" 85123A", raw(), "invalid_key"),
        (b"x" * (ITEM_ID_MAX + 1), None, "invalid_key"),
        (b"85123A", b"x" * MAX, "too_large"),
        (b"85123A", b"\xff\xfe", "invalid_utf8"),
        (b"85123A", b'{"item_id": ', "invalid_json"),
        (b"85123A", b'{"item_id":"85123A","title":"t","price":NaN}', "invalid_json"),
        (b"85123A", b"[" * 3000 + b"]" * 3000, "invalid_json"),
        (b"85123A", b"null", "not_an_object"),
        (b"85123A", b"[1]", "not_an_object"),
        (b"85123A", raw(item_id=7), "invalid_item_id"),
        (b"a,b", raw(item_id="a,b"), "invalid_key"),
        (b"85123A", raw(title=""), "invalid_title"),
        (b"85123A", raw(title="   "), "invalid_title"),
        (b"85123A", raw(title="a\u0007b"), "invalid_title"),
        (b"85123A", raw(title="\ud800"), "invalid_title"),
        (b"85123A", raw(title="t" * (TITLE_MAX + 1)), "invalid_title"),
        (b"85123A", raw(title=None), "invalid_title"),
        (b"85123A", raw(price=-0.01), "invalid_price"),
        (b"85123A", raw(price="2.55"), "invalid_price"),
        (b"85123A", raw(price=True), "invalid_price"),
        (b"85123A", b'{"item_id":"85123A","title":"t","price":1e999}', "invalid_price"),
        (b"85123A", b'{"item_id":"85123A","title":"t","price":' + b"9" * 400 + b"}", "invalid_price"),
        (b"85123A", raw(category=["home"]), "invalid_category"),
        (b"OTHER", raw(), "key_mismatch"),
    ],
)
def test_rejections_carry_a_stable_reason(key: bytes | None, value: bytes | None, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_catalog(key, value, MAX)
    assert info.value.reason == reason


def test_an_unplanned_failure_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise OverflowError("a validator nobody wrote a test for")

    monkeypatch.setattr(CatalogItem, "model_validate", boom)
    with pytest.raises(Rejected) as info:
        parse_catalog(b"85123A", raw(), MAX)
    assert info.value.reason == "internal_error"


def check_total(key: bytes | None, value: bytes | None) -> None:
    """The contract: an item, a removal, or Rejected; and what it returns is valid and round-trips."""
    try:
        out = parse_catalog(key, value, MAX)
    except Rejected as exc:
        assert exc.reason and exc.reason != "internal_error", exc
        return
    assert key is not None and out.item_id == key.decode()
    if isinstance(out, CatalogItem):
        assert out.title.strip() == out.title and out.title
        assert out.price is None or out.price >= 0
        assert parse_catalog(out.key(), out.to_bytes(), MAX) == out
    else:
        assert value is None


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.text(min_size=0, max_size=140)
fields = st.fixed_dictionaries(
    {},
    optional={
        "item_id": ids | json_values,
        "title": st.text(max_size=600) | json_values,
        "category": st.none() | st.text(max_size=140) | json_values,
        "price": st.none() | st.floats() | st.integers() | json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.none() | st.binary(max_size=64), st.none() | st.binary(max_size=256))
def test_arbitrary_bytes_end_as_a_record_or_a_rejection(key: bytes | None, value: bytes | None) -> None:
    check_total(key, value)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(ids, fields)
def test_arbitrary_json_documents_end_as_a_record_or_a_rejection(item_id: str, doc_fields: dict) -> None:
    key = item_id.encode("utf-8", "surrogatepass")
    value = json.dumps(doc_fields).encode("utf-8", "surrogatepass")
    check_total(key, value)
    check_total(key, None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_records_end_as_a_record_or_a_rejection(data: st.DataObject) -> None:
    item = CatalogItem(item_id="85123A", title="White hanging heart", category="home", price=2.55)
    value = bytearray(item.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(value) - 1)))
        if op == "flip" and value:
            value[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del value[at:]
        else:
            value[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    check_total(item.key(), bytes(value))


@given(
    st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=","), min_size=1, max_size=40).map(
        str.strip
    ),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=100).map(str.strip),
    st.none() | st.floats(min_value=0, allow_infinity=False, allow_nan=False),
)
def test_valid_records_round_trip(item_id: str, title: str, price: float | None) -> None:
    if not item_id or not title:
        return
    item = CatalogItem(item_id=item_id, title=title, price=price)
    assert parse_catalog(item.key(), item.to_bytes(), MAX) == item
