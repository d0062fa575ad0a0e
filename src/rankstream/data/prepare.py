"""One call from raw data to everything the models and the scorer read: `prepare(source, out_dir)`.

out_dir receives
    interactions.parquet, catalog.parquet   the data in the bring-your-own format (rankstream.data.formats)
    split.json                              the time split's boundaries (as chosen, for a `SplitByDays`)
    neighbours.json, trending.json          co-visitation and trending, from the train split only
    item_stats.json                         per-item sales statistics for the signals, train split only
    prepared.json                           fingerprint of the inputs plus counts; written last
Rerunning with the same source files and settings finds a matching prepared.json and does nothing.
"""

import json
import logging
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from rankstream.data.covisit import covisitation, trending
from rankstream.data.formats import read_catalog, read_interactions, write_catalog, write_interactions
from rankstream.data.itemstats import item_stats, stats_from_json, stats_to_json
from rankstream.data.retail import ConvertReport, convert_online_retail
from rankstream.data.split import DEFAULT_SPLIT, Split, SplitByDays, split_frame
from rankstream.stream.errors import ConfigError
from rankstream.stream.signals import ItemStats

log = logging.getLogger(__name__)

RETAIL_ENV = "RANKSTREAM_RETAIL_CSV"
# Bump when the outputs change meaning, so old out_dirs are rebuilt rather than trusted.
OUTPUT_VERSION = 2  # 2: item_stats.json
MANIFEST = "prepared.json"
OUTPUTS = (
    "interactions.parquet",
    "catalog.parquet",
    "split.json",
    "neighbours.json",
    "trending.json",
    "item_stats.json",
)
_SUFFIXES = (".parquet", ".csv", ".csv.gz")
PARTS = ("train", "valid", "test")  # the order of `Prepared.frames`


def default_retail_path() -> Path:
    """$RANKSTREAM_RETAIL_CSV, else the copy the repository carries (data/online_retail/, with its licence)."""
    env = os.environ.get(RETAIL_ENV)
    if env:
        return Path(env)
    # src/rankstream/data/prepare.py -> the repository root is three folders up.
    return Path(__file__).resolve().parents[3] / "data" / "online_retail" / "online_retail.csv.gz"


@dataclass(frozen=True)
class Prepared:
    """A prepared out_dir; the properties read its files on first use and keep them."""

    out_dir: Path
    split: Split
    reused: bool = False
    report: ConvertReport | None = None  # set when the source was the Online Retail export
    rule: SplitByDays | None = None  # set when the split was chosen from the data

    @classmethod
    def load(cls, out_dir: Path) -> "Prepared":
        """Open an out_dir that `prepare` finished earlier."""
        out_dir = Path(out_dir)
        manifest = _read_manifest(out_dir)
        if manifest is None:
            raise ConfigError(f"{out_dir}: not a prepared data folder (no {MANIFEST}); run prepare first")
        report = manifest.get("report")
        asked = manifest["fingerprint"]["split"]
        rule = SplitByDays.from_dict(asked) if "test_days" in asked else None
        return cls(
            out_dir=out_dir,
            # A folder prepared before rules existed records its split only in the fingerprint.
            split=Split.from_dict(manifest.get("split", asked)),
            reused=True,
            report=ConvertReport.from_dict(report) if report else None,
            rule=rule,
        )

    def path(self, name: str) -> Path:
        return self.out_dir / name

    @cached_property
    def interactions(self) -> pd.DataFrame:
        return read_interactions(self.path("interactions.parquet"))

    @cached_property
    def catalog_frame(self) -> pd.DataFrame:
        return read_catalog(self.path("catalog.parquet"))

    @cached_property
    def catalog(self) -> dict[str, str]:
        """item_id -> title."""
        return dict(zip(self.catalog_frame["item_id"], self.catalog_frame["title"], strict=True))

    @cached_property
    def neighbours(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = json.loads(self.path("neighbours.json").read_text())
        return result

    @cached_property
    def trending(self) -> list[str]:
        result: list[str] = json.loads(self.path("trending.json").read_text())
        return result

    @cached_property
    def item_stats(self) -> dict[str, ItemStats]:
        """item_id -> sales statistics on the train split (what the signals read)."""
        path = self.path("item_stats.json")
        if not path.is_file():
            # A folder prepared before the statistics existed: they are a pure function of the train split.
            log.warning("%s has no item_stats.json (prepared by an older version); computing it", self.out_dir)
            return item_stats(self.frames[0])
        return stats_from_json(json.loads(path.read_text()))

    @property
    def params(self) -> dict[str, int]:
        """The co-visitation and trending settings the folder was prepared with."""
        manifest = _read_manifest(self.out_dir) or {}
        params: dict[str, int] = manifest.get("fingerprint", {}).get("params", {})
        return params

    @cached_property
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(train, valid, test) cut from the interactions by the split."""
        return split_frame(self.interactions, self.split)

    def frame(self, part: str) -> pd.DataFrame:
        """One part of the split by name: "train", "valid" or "test"."""
        if part not in PARTS:
            raise ConfigError(f"no split part {part!r}; choose one of {', '.join(PARTS)}")
        return self.frames[PARTS.index(part)]

    @property
    def summary(self) -> dict[str, Any]:
        """The counts recorded in prepared.json."""
        manifest = _read_manifest(self.out_dir) or {}
        counts: dict[str, Any] = manifest.get("counts", {})
        return counts


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _find(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}{s}" for s in _SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) != 1:
        problem = "holds no" if not found else f"holds {len(found)} candidate"
        raise ConfigError(
            f"{folder}: {problem} {stem} file(s); put exactly one of "
            f"{', '.join(stem + s for s in _SUFFIXES)} there (see rankstream.data.formats)"
        )
    return found[0]


def _source_files(source: Path) -> tuple[str, list[Path]]:
    """('retail', [csv]) for an Online Retail export, ('byo', [interactions, catalog]) for a folder."""
    if source.is_file():
        return "retail", [source]
    if source.is_dir():
        return "byo", [_find(source, "interactions"), _find(source, "catalog")]
    hint = f" (set {RETAIL_ENV} to the Online Retail CSV)" if source == default_retail_path() else ""
    raise ConfigError(f"{source}: no such file or folder{hint}")


def _fingerprint(kind: str, files: list[Path], split: Split | SplitByDays, params: dict[str, int]) -> dict[str, Any]:
    stats = [(f.resolve(), f.stat()) for f in files]
    return {
        "version": OUTPUT_VERSION,
        "kind": kind,
        "files": [{"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns} for p, st in stats],
        "split": split.to_dict(),
        "params": params,
    }


def _load_source(kind: str, files: list[Path], out_dir: Path) -> tuple[pd.DataFrame, ConvertReport | None]:
    """Write interactions.parquet and catalog.parquet into out_dir; return the interactions."""
    if kind == "retail":
        report = convert_online_retail(files[0], out_dir)
        return read_interactions(out_dir / "interactions.parquet"), report
    interactions, catalog = read_interactions(files[0]), read_catalog(files[1])
    missing = set(interactions["item_id"]).difference(catalog["item_id"])
    if missing:
        # Not fatal: such items still shape co-visitation, but the ranker has no text for them.
        log.warning("%d item ids in %s are not in %s, e.g. %s", len(missing), files[0], files[1], sorted(missing)[:3])
    write_interactions(interactions, out_dir / "interactions.parquet")
    write_catalog(catalog, out_dir / "catalog.parquet")
    return interactions, None


def _up_to_date(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether out_dir already holds every output, built from the same inputs and settings."""
    manifest = _read_manifest(out_dir)
    return (
        manifest is not None
        and manifest.get("fingerprint") == fingerprint
        and all((out_dir / name).is_file() for name in OUTPUTS)
    )


def _counts(
    interactions: pd.DataFrame, parts: tuple[pd.DataFrame, ...], neighbours: dict[str, list[str]]
) -> dict[str, Any]:
    """The sizes recorded in prepared.json (`Prepared.summary`)."""
    train, valid, test = parts
    return {
        "rows": len(interactions),
        "first_ts": interactions["ts"].min().isoformat() if len(interactions) else None,
        "last_ts": interactions["ts"].max().isoformat() if len(interactions) else None,
        "users": int(interactions["user_id"].nunique()),
        "items": int(interactions["item_id"].nunique()),
        "train_rows": len(train),
        "valid_rows": len(valid),
        "test_rows": len(test),
        "items_with_neighbours": len(neighbours),
    }


def _check_parts(
    interactions: pd.DataFrame, split: Split, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame
) -> None:
    """Refuse a split with nothing to learn from; warn about one with nothing to judge on."""
    if train.empty:
        raise ConfigError(
            f"split puts no interaction in train (train_end {split.train_end.isoformat()}, data from "
            f"{interactions['ts'].min().isoformat()} to {interactions['ts'].max().isoformat()}); "
            "choose boundaries inside the data (prepare --train-end/--valid-end), or let prepare choose "
            "them (--test-days/--valid-days, or neither)"
        )
    for name, frame in (("valid", valid), ("test", test)):
        if frame.empty:
            log.warning("split leaves the %s part empty; check the boundaries %s", name, split.to_dict())


def prepare(
    source: Path | None,
    out_dir: Path,
    split: Split | SplitByDays = DEFAULT_SPLIT,
    *,
    k: int = 30,
    trending_days: int = 30,
    n_trending: int = 100,
    force: bool = False,
) -> Prepared:
    """Convert or read `source`, split it by time and build co-visitation and trending into `out_dir`.

    `source` None means the Online Retail export (see `default_retail_path`); a file is read as an
    Online Retail CSV; a folder must hold interactions.{parquet,csv} and catalog.{parquet,csv}.
    `split` is a `Split` with fixed boundaries, or a `SplitByDays` that chooses them from the data.
    Skips all work when out_dir already holds outputs of the same source files, split and settings.
    """
    source = Path(source) if source is not None else default_retail_path()
    out_dir = Path(out_dir)
    kind, files = _source_files(source)
    if kind == "byo" and source.resolve() == out_dir.resolve():
        # Writing interactions.parquet beside interactions.csv would make the source ambiguous next time.
        raise ConfigError(f"{out_dir}: out_dir must not be the source folder; choose another folder")
    fingerprint = _fingerprint(kind, files, split, {"k": k, "trending_days": trending_days, "n_trending": n_trending})

    if not force and _up_to_date(out_dir, fingerprint):
        log.info("%s already prepared from %s with this split; nothing to do", out_dir, source)
        return Prepared.load(out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    # The manifest marks a finished folder; remove it first so a crash halfway is never trusted.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    interactions, report = _load_source(kind, files, out_dir)
    timings["load_s"] = time.perf_counter() - started

    chosen = split.resolve(interactions["ts"]) if isinstance(split, SplitByDays) else split
    train, valid, test = split_frame(interactions, chosen)
    _check_parts(interactions, chosen, train, valid, test)
    _write_json(out_dir / "split.json", chosen.to_dict())

    started = time.perf_counter()
    neighbours = covisitation(train, k=k)
    timings["covisit_s"] = time.perf_counter() - started
    _write_json(out_dir / "neighbours.json", neighbours)
    _write_json(out_dir / "trending.json", trending(train, days=trending_days, n=n_trending))
    _write_json(out_dir / "item_stats.json", stats_to_json(item_stats(train)))

    counts = _counts(interactions, (train, valid, test), neighbours) | {n: round(s, 3) for n, s in timings.items()}
    _write_json(
        out_dir / MANIFEST,
        {
            "fingerprint": fingerprint,
            "split": chosen.to_dict(),
            "report": report.to_dict() if report else None,
            "counts": counts,
        },
    )
    log.info("prepared %s: %s", out_dir, counts)
    rule = split if isinstance(split, SplitByDays) else None
    return Prepared(out_dir=out_dir, split=chosen, reused=False, report=report, rule=rule)
