"""The Online Retail converter: each drop reason on a tiny export, then the real file (slow)."""

import hashlib
from pathlib import Path

import pytest

from rankstream.data.formats import read_catalog, read_interactions
from rankstream.data.prepare import default_retail_path
from rankstream.data.retail import convert_online_retail
from rankstream.stream.errors import ConfigError

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
ROWS = [
    "536365,85123A,WHITE HEART ,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",
    "536366,85123A,WHITE HEART HOLDER,2,2010-12-02 09:00:00,2.65,13047.0,United Kingdom",
    "536367,85123A,WHITE HEART,1,2010-12-03 09:00:00,2.45,13047.0,United Kingdom",
    "C536368,71053,WHITE LANTERN,-1,2010-12-03 10:00:00,3.39,17850.0,United Kingdom",  # cancelled
    "536369,71053,WHITE LANTERN,1,2010-12-03 11:00:00,3.39,,United Kingdom",  # no customer
    "536370,71053,,0,2010-12-03 12:00:00,0,13047.0,United Kingdom",  # non-positive quantity
    "536371,POST,POSTAGE,1,2010-12-03 13:00:00,18,13047.0,France",  # non-product
    "536371,gift_0001_20,GIFT VOUCHER,1,2010-12-03 13:00:00,20,13047.0,France",  # non-product
    "536372,22000,  ,3,2010-12-03 14:00:00,1,13047.0,France",  # empty description
]


def test_convert_counts_each_drop_reason_and_writes_the_format(tmp_path: Path) -> None:
    src = tmp_path / "retail.csv"
    src.write_text(HEADER + "\n".join(ROWS) + "\n")
    report = convert_online_retail(src, tmp_path / "out")
    assert report.rows_read == 10
    assert report.dropped == {
        "cancelled": 1,
        "no_customer": 1,
        "non_positive_quantity": 1,
        "non_product": 2,
        "empty_description": 1,
    }
    assert (report.rows_kept, report.users, report.items, report.baskets) == (4, 2, 2, 3)
    text = str(report)
    assert "dropped cancelled: 1" in text and "rows kept: 4" in text

    df = read_interactions(tmp_path / "out" / "interactions.parquet")
    assert list(df["user_id"]) == ["17850", "17850", "13047", "13047"]
    assert list(df["basket"]) == ["536365", "536365", "536366", "536367"]
    assert set(df["event"]) == {"purchase"}
    cat = read_catalog(tmp_path / "out" / "catalog.parquet").set_index("item_id")
    # Two of three rows say "WHITE HEART" once stripped; it beats "WHITE HEART HOLDER".
    assert cat.loc["85123A", "title"] == "WHITE HEART"
    assert cat.loc["85123A", "price"] == pytest.approx(2.55)
    assert sorted(cat.index) == ["71053", "85123A"]


def test_not_an_online_retail_file(tmp_path: Path) -> None:
    src = tmp_path / "other.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"other.csv: missing column\(s\) InvoiceNo, StockCode"):
        convert_online_retail(src, tmp_path / "out")
    with pytest.raises(ConfigError, match="RANKSTREAM_RETAIL_CSV"):
        convert_online_retail(tmp_path / "absent.csv", tmp_path / "out")


@pytest.mark.slow
def test_real_online_retail(tmp_path: Path) -> None:
    src = default_retail_path()
    assert src.is_file(), f"{src} is missing: the repository carries the Online Retail export in data/online_retail/"
    report = convert_online_retail(src, tmp_path)
    assert report.rows_read == 541_909
    assert report.dropped["cancelled"] == 9_288
    assert report.dropped["no_customer"] == 134_697
    assert report.dropped["non_positive_quantity"] == 0  # once cancellations and guests are gone
    # The README's clean purchases (397,924 rows, 4,339 users, 3,665 items), less postage and fees.
    assert report.rows_kept + report.dropped["non_product"] == 397_924
    assert 1_000 < report.dropped["non_product"] < 2_500
    assert 4_300 <= report.users <= 4_339
    assert 3_600 <= report.items <= 3_665
    assert report.first_ts.startswith("2010-12-01") and report.last_ts.startswith("2011-12-09")
    assert len(read_catalog(tmp_path / "catalog.parquet")) == report.items


def test_the_repository_carries_the_data_it_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANKSTREAM_RETAIL_CSV", raising=False)
    src = default_retail_path()
    readme = (src.parent / "README.md").read_text()
    assert "CC BY 4.0" in readme
    assert hashlib.sha256(src.read_bytes()).hexdigest() in readme
