"""Another shop's data from the command line: a split chosen from the data, flags that set it, one-line errors."""

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from rankstream.cli.main import _split_choice, build_parser, main
from rankstream.data.prepare import Prepared, prepare
from rankstream.data.split import DEFAULT_SPLIT, Split, SplitByDays
from rankstream.stream.errors import ConfigError

DAYS = 100  # 2019-02-01 .. 2019-05-11
ITEMS = [f"SKU-{c}{d}" for c in "ABCD" for d in "XYZ"]


def _shop(folder: Path) -> Path:
    """A shop from 2019: text user and item ids, two purchases a day, a catalog missing two items."""
    folder.mkdir()
    rows = ["user_id,item_id,ts,event"]
    for day in range(DAYS):
        ts = pd.Timestamp("2019-02-01T09:30:00Z") + pd.Timedelta(days=day, minutes=7 * (day % 5))
        user = f"cust-{day % 7:03d}"
        for k in range(2):
            rows.append(f"{user},{ITEMS[(day + 3 * k) % len(ITEMS)]},{ts.isoformat()},purchase")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")
    known = ITEMS[:-2]
    (folder / "catalog.csv").write_text("item_id,title\n" + "".join(f"{i},Thing {i.lower()}\n" for i in known))
    return folder


def _utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def _parts(prepared: Prepared) -> tuple[int, int, int]:
    train, valid, test = prepared.frames
    return len(train), len(valid), len(test)


def test_the_default_rule_gives_test_and_valid_a_tenth_of_the_days_each(tmp_path: Path) -> None:
    prepared = prepare(_shop(tmp_path / "shop"), tmp_path / "out", SplitByDays())
    # 100 days: test = the last 10 (from 2019-05-02), valid = the 10 before (from 2019-04-22).
    assert prepared.split == Split("2019-04-22", "2019-05-02")
    assert _parts(prepared) == (160, 20, 20)
    assert prepared.rule == SplitByDays() and Prepared.load(tmp_path / "out").rule == SplitByDays()
    assert json.loads((tmp_path / "out" / "split.json").read_text())["valid_end"] == "2019-05-02T00:00:00+00:00"
    # Items missing from the catalog still count; ids stay text.
    assert set(prepared.interactions["item_id"]) == set(ITEMS)
    assert "SKU-DZ" not in prepared.catalog
    assert prepare(tmp_path / "shop", tmp_path / "out", SplitByDays()).reused


def test_the_rule_rounds_half_up_to_whole_days_and_refuses_data_too_short() -> None:
    def ts(first: str, last: str) -> pd.Series:
        return pd.Series(pd.to_datetime([first, last], utc=True))

    # 25 days (2.5 rounds up to 3), boundaries at midnights whatever the hour of the last event.
    assert SplitByDays().resolve(ts("2019-06-01T13:00Z", "2019-06-25T23:59Z")) == Split("2019-06-20", "2019-06-23")
    assert SplitByDays(test_days=7).resolve(ts("2019-06-01", "2019-06-25")) == Split("2019-06-16", "2019-06-19")
    # 3 days: one each; 2 days leave none for train.
    assert SplitByDays().resolve(ts("2019-06-01T05:00Z", "2019-06-03T05:00Z")) == Split("2019-06-02", "2019-06-03")
    with pytest.raises(ConfigError, match=r"covers 2 day\(s\) .* leave none for train: pass fewer --test-days"):
        SplitByDays().resolve(ts("2019-06-01", "2019-06-02"))
    with pytest.raises(ConfigError, match="test_days=0 must be a whole number of days, 1 or more"):
        SplitByDays(test_days=0)


def _prepare_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["prepare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_prepare_source_with_no_flags_chooses_and_prints_the_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _prepare_cli(capsys, "--source", str(_shop(tmp_path / "shop")), "--out", str(tmp_path / "out"))
    assert code == 0
    assert "data from 2019-02-01 to 2019-05-11" in out
    assert "chosen from the data: test = its last 10 days, valid = the 10 before" in out
    lines = out.splitlines()
    assert any(line.split()[:3] == ["train", "before", "2019-04-22"] and "160 rows" in line for line in lines)
    assert any(line.split()[:4] == ["valid", "2019-04-22", "to", "2019-05-02"] and "20 rows" in line for line in lines)
    assert any(line.split()[:3] == ["test", "from", "2019-05-02"] and "20 rows" in line for line in lines)


@pytest.mark.parametrize(
    ("flags", "split", "parts"),
    [
        (["--train-end", "2019-04-01", "--valid-end", "2019-04-15"], Split("2019-04-01", "2019-04-15"), (118, 28, 54)),
        (["--test-days", "7", "--valid-days", "14"], Split("2019-04-21", "2019-05-05"), (158, 28, 14)),
        (["--test-days", "30"], Split("2019-04-02", "2019-04-12"), (120, 20, 60)),
    ],
)
def test_prepare_takes_explicit_boundaries_in_either_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], split: Split, parts: tuple[int, int, int]
) -> None:
    out_dir = tmp_path / "out"
    code, out, _ = _prepare_cli(capsys, "--source", str(_shop(tmp_path / "shop")), "--out", str(out_dir), *flags)
    assert code == 0
    prepared = Prepared.load(out_dir)
    assert prepared.split == split and _parts(prepared) == parts
    assert f"from {split.valid_end:%Y-%m-%d}" in out


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["prepare", *argv])


def test_online_retail_without_source_keeps_its_documented_split() -> None:
    assert _split_choice(_args()) == DEFAULT_SPLIT
    assert _split_choice(_args("--source", "shop")) == SplitByDays()
    assert _split_choice(_args("--valid-days", "5")) == SplitByDays(None, 5)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--train-end", "2019-04-01", "--test-days", "7"], "pass either --train-end and --valid-end"),
        (["--valid-end", "2019-04-01", "--valid-days", "7"], "pass either --train-end and --valid-end"),
        (["--train-end", "2019-04-01"], "--train-end and --valid-end go together; pass both ISO dates"),
        (["--train-end", "2019-05-01", "--valid-end", "2019-04-01"], "train_end .* must be before valid_end"),
        (["--train-end", "April", "--valid-end", "2019-04-01"], "train_end='April' is not an ISO-8601 date"),
        (["--test-days", "0"], "test_days=0 must be a whole number of days"),
        (["--test-days", "95"], "leave none for train: pass fewer --test-days/--valid-days"),
    ],
)
def test_a_bad_combination_is_one_line_saying_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    code, _, err = _prepare_cli(capsys, "--source", str(_shop(tmp_path / "shop")), "--out", str(tmp_path / "o"), *flags)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("rankstream: error: ")
    assert re.search(says, line)


def _break(shop: Path, name: str, text: str) -> None:
    (shop / name).write_text(text)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "interactions.csv",
            "user_id,sku,ts\ncust-1,SKU-AX,2019-03-01T10:00:00Z\n",
            r"interactions.csv: missing column\(s\) item_id \(found: user_id, sku, ts\); interactions need columns",
        ),
        (
            "interactions.csv",
            "user_id,item_id,ts\ncust-1,SKU-AX,2019-03-01T10:00:00Z\ncust-2,SKU-AY,01/03/2019 10:00\n",
            r"interactions.csv: column ts has 1 value\(s\) that are neither ISO-8601 nor epoch milliseconds "
            r"\(rows \[1\]: \['01/03/2019 10:00'\]\); write times as ISO-8601 \(2019-05-01T12:30:00Z\)",
        ),
        ("catalog.csv", "item_id,title\n", r"catalog.csv: column item_id has no rows; add one row \(item_id,title\)"),
        (
            "catalog.csv",
            "item_id,name\nSKU-AX,Thing\n",
            r"catalog.csv: missing column\(s\) title .*; a catalog needs columns item_id \(unique\), title",
        ),
    ],
)
def test_a_malformed_source_fails_with_one_line_naming_file_column_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, says: str
) -> None:
    shop = _shop(tmp_path / "shop")
    _break(shop, name, text)
    with pytest.raises(ConfigError, match=says) as info:
        prepare(shop, tmp_path / "out", SplitByDays())
    assert str(shop / name) in str(info.value) and "\n" not in str(info.value)
    code, _, err = _prepare_cli(capsys, "--source", str(shop), "--out", str(tmp_path / "out"))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line == f"rankstream: error: {info.value}"
