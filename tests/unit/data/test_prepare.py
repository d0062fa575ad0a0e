"""prepare(): outputs, reuse when nothing changed, redo when something did."""

from pathlib import Path

import pytest

from rankstream.data.prepare import OUTPUTS, Prepared, default_retail_path, prepare
from rankstream.data.split import Split
from rankstream.stream.errors import ConfigError
from rankstream.stream.signals import ItemStats

SPLIT = Split("2024-01-10", "2024-01-20")


def _byo(folder: Path) -> Path:
    folder.mkdir()
    lines = ["user_id,item_id,ts,event"]
    for day in range(1, 30):
        lines.append(f"u{day % 3},i{day % 5},2024-01-{day:02d}T10:00:00Z,purchase")
        lines.append(f"u{day % 3},i{(day + 1) % 5},2024-01-{day:02d}T10:00:00Z,purchase")
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "catalog.csv").write_text("item_id,title\n" + "".join(f"i{n},Item {n}\n" for n in range(5)))
    return folder


def test_prepare_writes_everything_and_reuses_it(tmp_path: Path) -> None:
    src, out = _byo(tmp_path / "src"), tmp_path / "out"
    first = prepare(src, out, SPLIT)
    assert not first.reused and first.report is None
    for name in (*OUTPUTS, "prepared.json"):
        assert (out / name).is_file()
    train, valid, test = first.frames
    assert (len(train), len(valid), len(test)) == (18, 20, 20)
    assert first.catalog["i3"] == "Item 3"
    assert set(first.neighbours) <= {f"i{n}" for n in range(5)} and first.trending
    assert first.summary["train_rows"] == 18
    # Item statistics for the signals, from the train split only (up to 2024-01-09 10:00).
    assert set(first.item_stats) == {f"i{n}" for n in range(5)}
    # i1 is in the baskets of days 1 (u1), 5 (u2) and 6 (u0).
    assert first.item_stats["i1"] == ItemStats(baskets=3, baskets_7d=2, baskets_30d=3, buyers=3, age_days=8)
    assert sum(s.baskets for s in first.item_stats.values()) == 18
    assert Prepared.load(out).item_stats == first.item_stats

    stamp = (out / "neighbours.json").stat().st_mtime_ns
    again = prepare(src, out, SPLIT)
    assert again.reused and (out / "neighbours.json").stat().st_mtime_ns == stamp
    assert again.neighbours == first.neighbours and again.split == SPLIT
    assert Prepared.load(out).catalog == first.catalog

    # Another split, or a changed source file, is redone.
    assert not prepare(src, out, Split("2024-01-05", "2024-01-20")).reused
    with (src / "catalog.csv").open("a") as f:
        f.write("i9,Item 9\n")
    redone = prepare(src, out, Split("2024-01-05", "2024-01-20"))
    assert not redone.reused and redone.catalog["i9"] == "Item 9"


def test_a_folder_prepared_before_item_stats_computes_them_from_train(tmp_path: Path) -> None:
    first = prepare(_byo(tmp_path / "src"), tmp_path / "out", SPLIT)
    expected = first.item_stats
    (tmp_path / "out" / "item_stats.json").unlink()
    assert Prepared.load(tmp_path / "out").item_stats == expected


def test_prepare_refuses_unusable_sources(tmp_path: Path) -> None:
    src = _byo(tmp_path / "src")
    with pytest.raises(ConfigError, match="split puts no interaction in train"):
        prepare(src, tmp_path / "out", Split("2023-01-01", "2023-02-01"))
    with pytest.raises(ConfigError, match="out_dir must not be the source folder"):
        prepare(src, src, SPLIT)
    (src / "catalog.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds 2 candidate catalog file"):
        prepare(src, tmp_path / "out", SPLIT)
    with pytest.raises(ConfigError, match="no such file or folder"):
        prepare(tmp_path / "missing", tmp_path / "out", SPLIT)
    with pytest.raises(ConfigError, match="not a prepared data folder"):
        Prepared.load(tmp_path / "nothing")


def test_retail_path_comes_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RANKSTREAM_RETAIL_CSV", raising=False)
    repo = Path(__file__).resolve().parents[3]
    assert default_retail_path() == repo / "data" / "online_retail" / "online_retail.csv.gz"  # carried by the repo
    monkeypatch.setenv("RANKSTREAM_RETAIL_CSV", str(tmp_path / "r.csv.gz"))
    assert default_retail_path() == tmp_path / "r.csv.gz"
