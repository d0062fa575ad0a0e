"""The bring-your-own formats: what is accepted, how it is coerced, and what a bad file is told."""

from pathlib import Path

import pandas as pd
import pytest

import rankstream.data
from rankstream.data.formats import (
    basket_keys,
    read_catalog,
    read_interactions,
    write_catalog,
    write_interactions,
)
from rankstream.stream.errors import ConfigError


def test_public_names_are_pinned() -> None:
    assert sorted(rankstream.data.__all__) == sorted(
        [
            "DEFAULT_SPLIT",
            "ConvertReport",
            "Instance",
            "Prepared",
            "Split",
            "SplitByDays",
            "build_instances",
            "candidate_recall",
            "convert_online_retail",
            "covisitation",
            "prepare",
            "read_catalog",
            "read_interactions",
            "split_frame",
            "trending",
            "write_catalog",
            "write_interactions",
        ]
    )
    for name in rankstream.data.__all__:
        assert getattr(rankstream.data, name) is not None


def test_csv_ids_stay_text_and_ts_formats_parse_to_utc(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text(
        "user_id,item_id,ts\n"
        "007,0042,2024-01-01T10:00:00+02:00\n"  # 08:00 UTC
        "007,0043,2024-01-01T09:00:00Z\n"
        "8,44,2024-01-01 07:00:00\n"  # no zone: UTC
    )
    df = read_interactions(path)
    assert list(df["user_id"]) == ["8", "007", "007"]
    assert list(df["item_id"]) == ["44", "0042", "0043"]
    assert str(df["ts"].dt.tz) == "UTC"
    assert [t.hour for t in df["ts"]] == [7, 8, 9]
    assert set(df["event"]) == {"click"}


def test_epoch_ms_and_sort_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text(
        "user_id,item_id,ts,event\nu,b,1700000000000,view\nu,a,1700000000000,purchase\nu,z,1600000000000,\n"
    )
    df = read_interactions(path)
    assert list(df["item_id"]) == ["z", "b", "a"]  # same ts keeps file order
    assert df["ts"].iloc[1] == pd.Timestamp(1700000000000, unit="ms", tz="UTC")
    assert list(df["event"]) == ["click", "view", "purchase"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(
        {
            "user_id": ["01", "2"],
            "item_id": ["x", "0y"],
            "ts": pd.to_datetime(["2024-05-01T12:00:00.123456Z", "2024-05-02T00:00:00Z"], utc=True, format="ISO8601"),
            "event": ["purchase", "add_to_cart"],
            "basket": ["b1", "b2"],
            "extra": [1, 2],
        }
    )
    path = tmp_path / f"interactions{suffix}"
    write_interactions(df, path)
    back = read_interactions(path)
    pd.testing.assert_frame_equal(
        back[["user_id", "item_id", "event", "basket"]], df[["user_id", "item_id", "event", "basket"]]
    )
    assert list(back["ts"]) == list(df["ts"])
    assert list(back["extra"]) == [1, 2]


def test_missing_column_names_file_column_and_format(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text("user,item_id,ts\nu,i,2024-01-01\n")
    with pytest.raises(ConfigError) as err:
        read_interactions(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing column(s) user_id" in msg
    assert "user_id, item_id, ts" in msg  # the format itself


def test_unknown_event_is_refused_with_the_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts,event\nu,i,2024-01-01,buy\n")
    with pytest.raises(ConfigError, match=r"column event has unknown value\(s\) \['buy'\]; allowed: click"):
        read_interactions(path)


def test_bad_and_empty_values_are_refused(tmp_path: Path) -> None:
    bad_ts = tmp_path / "a.csv"
    bad_ts.write_text("user_id,item_id,ts\nu,i,yesterday\n")
    with pytest.raises(ConfigError, match=r"column ts has 1 value\(s\) that are neither ISO-8601 nor epoch"):
        read_interactions(bad_ts)
    empty_id = tmp_path / "b.csv"
    empty_id.write_text("user_id,item_id,ts\nu,,2024-01-01\n")
    with pytest.raises(ConfigError, match="column item_id has 1 empty value"):
        read_interactions(empty_id)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown file type"):
        read_interactions(tmp_path / "interactions.json")
    with pytest.raises(ConfigError, match="interactions file not found"):
        read_interactions(tmp_path / "nope.parquet")


def test_catalog_round_trip_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,title,price\n001, Red mug ,2.5\n2,NA,1\n")
    cat = read_catalog(path)
    assert list(cat["item_id"]) == ["001", "2"]
    assert list(cat["title"]) == ["Red mug", "NA"]  # stripped; "NA" is a title, not a missing value
    write_catalog(cat, tmp_path / "catalog.parquet")
    pd.testing.assert_frame_equal(read_catalog(tmp_path / "catalog.parquet"), cat)

    (tmp_path / "dup.csv").write_text("item_id,title\n1,a\n1,b\n")
    with pytest.raises(ConfigError, match=r"dup.csv: column item_id repeats 1 id"):
        read_catalog(tmp_path / "dup.csv")
    (tmp_path / "notitle.csv").write_text("item_id,name\n1,a\n")
    with pytest.raises(ConfigError, match=r"notitle.csv: missing column\(s\) title .*item_id \(unique\), title"):
        read_catalog(tmp_path / "notitle.csv")


def test_basket_keys_use_basket_column_else_user_and_ts() -> None:
    ts = pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-01"], utc=True)
    df = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "item_id": list("abcd"), "ts": ts})
    keys = basket_keys(df)
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] != keys[3]  # same ts, other user
    with_basket = basket_keys(df.assign(basket=["1", "2", "2", "2"]))
    assert with_basket[1] == with_basket[2] != with_basket[0]
    assert with_basket[2] != with_basket[3]  # a basket id reused by another user is another basket
