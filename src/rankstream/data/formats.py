"""The bring-your-own file formats: interactions and catalog, as CSV or Parquet.

Interactions: one row per user action.
    user_id   str, required
    item_id   str, required
    ts        ISO-8601 / RFC 3339 text (no zone means UTC) or epoch milliseconds, required; 1970 to 2199
    event     click | view | add_to_cart | purchase, optional (default "click")
    basket    optional basket/session id; without it a basket is one user's rows at one ts
Any other column is carried along untouched.

Catalog: one row per item.
    item_id   str, required, unique
    title     str, required, not empty (the text the ranker reads)
    category  str, optional
    price     number, optional

The file suffix picks the reader: `.csv` / `.csv.gz` or `.parquet`.
"""

import logging
from pathlib import Path

import pandas as pd

from rankstream.stream.errors import ConfigError

log = logging.getLogger(__name__)

EVENTS = ("click", "view", "add_to_cart", "purchase")
DEFAULT_EVENT = "click"

INTERACTIONS_FORMAT = (
    "interactions need columns user_id, item_id, ts (ISO-8601 text or epoch milliseconds) "
    f"and optionally event ({' | '.join(EVENTS)}; default {DEFAULT_EVENT}) and basket"
)
CATALOG_FORMAT = "a catalog needs columns item_id (unique), title (not empty) and optionally category, price"

# Microseconds: enough for RFC 3339 fractions, and one resolution whichever reader produced the frame.
TS_DTYPE = "datetime64[us, UTC]"
# Times a shop's data can hold; anything else is a unit or parsing mistake (seconds for milliseconds, year 0).
TS_RANGE = (pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC"))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ConfigError(f"{path}: unknown file type; use a .csv, .csv.gz or .parquet file")


def _read(path: Path, what: str, id_columns: tuple[str, ...]) -> pd.DataFrame:
    kind = _kind(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        if kind == "csv":
            # Ids are text: reading them as numbers would turn "00123" into 123 and "12346" into 12346.0.
            return pd.read_csv(path, dtype={c: str for c in id_columns}, keep_default_na=False, na_values=[""])
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read {what} as {kind}: {_one_line(exc)}") from exc


def _require(df: pd.DataFrame, path: Path | str, columns: tuple[str, ...], fmt: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns))
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}); {fmt}")


def _ids(df: pd.DataFrame, path: Path | str, column: str, fmt: str) -> pd.Series:
    values = df[column]
    empty = values.isna()
    if not empty.all():
        empty |= values.astype(str).str.strip() == ""
    if empty.any():
        rows = list(df.index[empty][:3])
        raise ConfigError(f"{path}: column {column} has {int(empty.sum())} empty value(s), e.g. rows {rows}; {fmt}")
    # Parquet may hold integer ids; the format's ids are always text.
    return values.astype(str).str.strip()


def _one_line(exc: BaseException) -> str:
    """A library's message on one line (pandas' often span several), for a ConfigError that must not."""
    return " ".join(str(exc).split())


def _ts_values(values: pd.Series) -> pd.Series:
    """Parse timestamps; a value that is neither format becomes NaT (the caller says which)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC")
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return pd.to_datetime(values, unit="ms", utc=True, errors="coerce")
    text = values.astype(str).str.strip()
    # Epoch ms read from CSV as text; 15 digits reach far past any real date, more is not a time.
    epoch = text.str.fullmatch(r"\d{1,15}")
    out = pd.Series(pd.NaT, index=values.index, dtype=TS_DTYPE)
    if epoch.any():
        out[epoch] = pd.to_datetime(text[epoch].astype("int64"), unit="ms", utc=True, errors="coerce")
    if not epoch.all():
        out[~epoch] = pd.to_datetime(text[~epoch], format="ISO8601", utc=True, errors="coerce")
    return out


def parse_ts(values: pd.Series, path: Path | str = "<frame>") -> pd.Series:
    """Timestamps as UTC datetimes: ISO-8601 text (naive = UTC), epoch milliseconds, or datetimes.

    Raises:
        ConfigError: on one line, naming the rows and values that are empty or neither format.
    """
    fix = "write times as ISO-8601 (2019-05-01T12:30:00Z) or epoch milliseconds (1556713800000)"
    try:
        out = _ts_values(values)
        out = out.astype(TS_DTYPE)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{path}: column ts cannot be read as times ({_one_line(exc)}); {fix}") from exc
    bad = out.isna()
    if bad.any():
        empty = values.isna() | (values.astype(str).str.strip() == "")
        wrong = bad & ~empty
        if not wrong.any():
            raise ConfigError(f"{path}: column ts is empty in rows {list(values.index[bad][:3])}; {fix}")
        shown = [str(v)[:40] for v in values[wrong][:3]]
        raise ConfigError(
            f"{path}: column ts has {int(wrong.sum())} value(s) that are neither ISO-8601 nor epoch milliseconds "
            f"(rows {list(values.index[wrong][:3])}: {shown}); {fix}"
        )
    outside = (out < TS_RANGE[0]) | (out >= TS_RANGE[1])
    if outside.any():
        shown = [str(v)[:40] for v in values[outside][:3]]
        raise ConfigError(
            f"{path}: column ts has {int(outside.sum())} value(s) outside {TS_RANGE[0]:%Y} to "
            f"{TS_RANGE[1].year - 1} (rows {list(values.index[outside][:3])}: {shown}); {fix}"
        )
    return out


def normalize_interactions(df: pd.DataFrame, path: Path | str = "<frame>") -> pd.DataFrame:
    """Check and coerce an interactions frame to the format; sorted stably by ts, fresh index."""
    _require(df, path, ("user_id", "item_id", "ts"), INTERACTIONS_FORMAT)
    out = df.copy()
    out["user_id"] = _ids(df, path, "user_id", INTERACTIONS_FORMAT)
    out["item_id"] = _ids(df, path, "item_id", INTERACTIONS_FORMAT)
    out["ts"] = parse_ts(df["ts"], path)
    if "event" in out.columns:
        # Text first: a Parquet column of numbers or nulls must not decide what fills its gaps.
        event = out["event"].astype(str).str.strip().where(out["event"].notna(), "").replace("", DEFAULT_EVENT)
        bad = ~event.isin(EVENTS)
        if bad.any():
            found = sorted(event[bad].unique())[:5]
            raise ConfigError(f"{path}: column event has unknown value(s) {found}; allowed: {', '.join(EVENTS)}")
        out["event"] = event
    else:
        out["event"] = DEFAULT_EVENT
    if "basket" in out.columns:
        out["basket"] = _ids(df, path, "basket", INTERACTIONS_FORMAT)
    # Stable: rows with one ts (one basket) keep the order they were written in.
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def normalize_catalog(df: pd.DataFrame, path: Path | str = "<frame>") -> pd.DataFrame:
    """Check and coerce a catalog frame to the format; titles stripped, fresh index."""
    _require(df, path, ("item_id", "title"), CATALOG_FORMAT)
    out = df.copy()
    out["item_id"] = _ids(df, path, "item_id", CATALOG_FORMAT)
    out["title"] = _ids(df, path, "title", CATALOG_FORMAT)
    dup = out["item_id"].duplicated()
    if dup.any():
        raise ConfigError(
            f"{path}: column item_id repeats {int(dup.sum())} id(s), e.g. {list(out['item_id'][dup][:3])}; "
            f"{CATALOG_FORMAT}"
        )
    if "category" in out.columns:
        out["category"] = out["category"].astype("str")
    if "price" in out.columns:
        try:
            out["price"] = pd.to_numeric(out["price"]).astype("float64")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: column price is not numeric ({_one_line(exc)}); {CATALOG_FORMAT}") from exc
    return out.reset_index(drop=True)


def read_interactions(path: Path) -> pd.DataFrame:
    """Read an interactions file (.csv / .parquet): str ids, UTC ts, event filled, sorted by ts; not empty."""
    path = Path(path)
    df = normalize_interactions(_read(path, "interactions", ("user_id", "item_id", "basket")), path)
    if df.empty:
        raise ConfigError(f"{path}: columns user_id, item_id, ts have no rows; add one row per user action")
    log.info("read %d interactions from %s", len(df), path)
    return df


def read_catalog(path: Path) -> pd.DataFrame:
    """Read a catalog file (.csv / .parquet): str item ids, stripped titles; not empty."""
    path = Path(path)
    df = normalize_catalog(_read(path, "catalog", ("item_id", "title", "category")), path)
    if df.empty:
        raise ConfigError(f"{path}: column item_id has no rows; add one row (item_id,title) per item you sell")
    log.info("read %d catalog items from %s", len(df), path)
    return df


def _write(df: pd.DataFrame, path: Path) -> None:
    kind = _kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    if kind == "csv":
        df.to_csv(tmp, index=False, compression="gzip" if path.name.lower().endswith(".gz") else None)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(path)


def write_interactions(df: pd.DataFrame, path: Path) -> None:
    """Write interactions in the format; CSV gets RFC 3339 UTC text timestamps."""
    path = Path(path)
    out = normalize_interactions(df)
    if _kind(path) == "csv":
        out["ts"] = out["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _write(out, path)
    log.info("wrote %d interactions to %s", len(out), path)


def write_catalog(df: pd.DataFrame, path: Path) -> None:
    """Write a catalog in the format."""
    path = Path(path)
    out = normalize_catalog(df)
    _write(out, path)
    log.info("wrote %d catalog items to %s", len(out), path)


def basket_keys(df: pd.DataFrame) -> pd.Series:
    """One key per (user, basket): the `basket` column where present, else the user's rows at one ts."""
    # The user is part of the key so that session ids reused across users never merge two people.
    if "basket" in df.columns:
        return df["user_id"] + "\x1f" + df["basket"].astype(str)
    ts_ms = df["ts"].astype("int64").astype(str)
    return df["user_id"] + "\x1f@" + ts_ms
