from pathlib import Path

import pytest

from rankstream.ops.catalog import read_catalog_file
from rankstream.stream.catalog import CatalogItem
from rankstream.stream.errors import ConfigError


def test_csv_rows_are_validated_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,category,price\n"
        "A1,Red mug,kitchen,3.5\n"
        'A2,"Blue mug, large",,\n'
        '"A,3",Mug,home,1\n'
        "A4,Green mug,kitchen,cheap\n"
        "A5,Pink mug,kitchen,-1\n"
        '"A6","two\nlines",,\n'
        "A7,,kitchen,1\n"
    )
    rows = read_catalog_file(path, 16_384)
    assert rows.items == [
        CatalogItem(item_id="A1", title="Red mug", category="kitchen", price=3.5),
        CatalogItem(item_id="A2", title="Blue mug, large"),
    ]
    # A row's line is where it starts (A6's title spans lines 7 and 8).
    assert [(b.line, b.reason) for b in rows.bad] == [
        (4, "invalid_key"),
        (5, "invalid_price"),
        (6, "invalid_price"),
        (7, "invalid_title"),
        (9, "invalid_title"),
    ]


def test_jsonl_rows_are_validated_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "B1", "title": "Tea towel", "price": 2}\n'
        "\n"
        '{"item_id": "B2", "title": ""}\n'
        "not json\n"
        '{"item_id": 5, "title": "x"}\n'
        '{"item_id": "B3", "title": "Cake stand", "category": null}\n'
    )
    rows = read_catalog_file(path, 16_384)
    assert [i.item_id for i in rows.items] == ["B1", "B3"]
    assert [(b.line, b.reason) for b in rows.bad] == [(3, "invalid_title"), (4, "invalid_json"), (5, "invalid_item_id")]


def test_a_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,name\nA1,Red mug\n")
    with pytest.raises(ConfigError, match="header item_id,title"):
        read_catalog_file(path, 16_384)
