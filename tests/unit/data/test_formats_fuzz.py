"""Whatever a source file holds, the readers either load it or say what is wrong: a ConfigError, nothing else."""

import csv
import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstream.data.formats import read_catalog, read_interactions
from rankstream.data.split import SplitByDays
from rankstream.stream.errors import ConfigError

COLUMNS = ["user_id", "item_id", "ts", "event", "basket", "title", "category", "price"]

# Good values of every column, then the mutations real exports carry.
GOOD = ["cust-1", "SKU-AX", "2019-03-01T10:00:00Z", "2019-03-01 10:00", "1551434400000", "purchase", "click", "2.5"]
BAD = [
    "",
    " ",
    "nan",
    "NA",
    "None",
    '"',
    ",",
    "\n",
    "buy",
    "2019-13-45",
    "01/03/2019 10:00",
    "9" * 25,
    "-1",
    "1e999",
    "9999-12-31T23:59:59Z",
    "0001-01-01",
    "2019-03-01T10:00:00+99:00",
    "\x00",
    "\ud7ff€",
]
cells = st.one_of(st.sampled_from(GOOD + BAD), st.text(max_size=12), st.integers().map(str), st.floats().map(str))
headers = st.one_of(
    st.permutations(COLUMNS).flatmap(lambda cols: st.integers(0, len(cols)).map(lambda n: cols[:n])),
    st.lists(st.one_of(st.sampled_from(COLUMNS), st.text(max_size=8)), max_size=9),
)
# Rows may be ragged: too few or too many cells for the header.
rows = st.lists(st.lists(cells, max_size=10), max_size=8)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _csv(header: list[str], body: list[list[str]], quoted: bool) -> str:
    if not quoted:  # raw joins: stray commas, quotes and newlines break the CSV itself
        return "\n".join(",".join(r) for r in [header, *body]) + "\n"
    out = io.StringIO()
    csv.writer(out).writerows([header, *body])
    return out.getvalue()


def _check_loads_or_config_error(path: Path) -> None:
    """Both readers on `path`: a frame of the format, or a ConfigError; any other exception fails the test."""
    try:
        df = read_interactions(path)
    except ConfigError:
        pass
    else:
        assert len(df) > 0 and str(df["ts"].dtype) == "datetime64[us, UTC]"
        assert df["ts"].is_monotonic_increasing
        try:
            SplitByDays().resolve(df["ts"])
        except ConfigError:
            pass
    try:
        cat = read_catalog(path)
    except ConfigError:
        pass
    else:
        assert len(cat) > 0 and cat["item_id"].is_unique


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(header=headers, body=rows, quoted=st.booleans(), gz=st.booleans())
def test_any_csv_loads_or_raises_config_error(
    folder: Path, header: list[str], body: list[list[str]], quoted: bool, gz: bool
) -> None:
    text = _csv(header, body, quoted)
    path = folder / ("source.csv.gz" if gz else "source.csv")
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8", "surrogatepass")))
    else:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_loads_or_config_error(path)


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from(["source.csv", "source.csv.gz", "source.parquet"]))
def test_any_bytes_load_or_raise_config_error(folder: Path, data: bytes, suffix: str) -> None:
    path = folder / suffix
    path.write_bytes(data)
    _check_loads_or_config_error(path)


# Parquet keeps types, so a column can hold numbers, booleans, datetimes or nulls where text belongs.
typed_columns = st.one_of(
    st.lists(st.one_of(st.none(), st.sampled_from(GOOD + BAD), st.text(max_size=8)), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=3, max_size=3),
    st.lists(st.floats(), min_size=3, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.lists(
        st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
        min_size=3,
        max_size=3,
    ),
)


@FUZZ
@given(columns=st.dictionaries(st.sampled_from(COLUMNS), typed_columns, max_size=len(COLUMNS)))
def test_any_parquet_loads_or_raises_config_error(folder: Path, columns: dict[str, list[object]]) -> None:
    path = folder / "source.parquet"
    pd.DataFrame(columns, index=range(3)).to_parquet(path)
    _check_loads_or_config_error(path)
