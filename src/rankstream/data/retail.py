"""Convert the UCI Online Retail export into the bring-your-own format.

The export mixes product sales with cancellations, guest checkouts, corrections, postage and fees.
Only a known customer's positive purchase of a real product says anything about taste, so everything
else is dropped, and each drop is counted by reason so a person can check the result against the
counts published with the data (the README next to it).
"""

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rankstream.data.formats import write_catalog, write_interactions
from rankstream.stream.errors import ConfigError

log = logging.getLogger(__name__)

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")

# Products have 5-digit codes, some with a variant letter suffix (85123A). Everything else is a
# service line: POST, DOT (postage), M (manual), D (discount), C2 (carriage), CRUK, BANK CHARGES,
# AMAZONFEE, PADS, S (samples), B (bad debt), gift_0001_*, DCGS* (bundles with no product text).
PRODUCT_CODE = r"\d{5}[A-Za-z]*"

# Drop reasons in the order they are applied; a row is counted under the first reason that hits it.
DROP_REASONS = ("cancelled", "no_customer", "non_positive_quantity", "non_product", "empty_description")


@dataclass
class ConvertReport:
    """What the conversion kept and dropped, and why."""

    source: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    rows_kept: int = 0
    users: int = 0
    items: int = 0
    baskets: int = 0
    first_ts: str = ""
    last_ts: str = ""

    def lines(self) -> list[str]:
        """The report as short lines for a terminal."""
        out = [f"source: {self.source}", f"rows read: {self.rows_read:,}"]
        out += [f"  dropped {reason}: {n:,}" for reason, n in self.dropped.items()]
        out += [
            f"rows kept: {self.rows_kept:,}",
            f"users: {self.users:,}  items: {self.items:,}  baskets: {self.baskets:,}",
            f"time span: {self.first_ts} .. {self.last_ts}",
        ]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConvertReport":
        return cls(**d)


def read_online_retail(src: Path) -> pd.DataFrame:
    """Read the raw export (CSV, optionally gzipped) with text ids; raise ConfigError if it is not one."""
    src = Path(src)
    if not src.is_file():
        raise ConfigError(f"{src}: Online Retail file not found; pass its path or set RANKSTREAM_RETAIL_CSV")
    try:
        raw = pd.read_csv(
            src,
            dtype={"InvoiceNo": str, "StockCode": str, "Description": str, "CustomerID": "float64"},
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{src}: cannot read as an Online Retail CSV: {exc}") from exc
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ConfigError(
            f"{src}: missing column(s) {', '.join(missing)}; an Online Retail export has {', '.join(COLUMNS)}"
        )
    return raw


def clean_online_retail(raw: pd.DataFrame, report: ConvertReport) -> pd.DataFrame:
    """Keep known customers' positive purchases of products; count the rest in `report.dropped`."""
    report.rows_read = len(raw)
    description = raw["Description"].fillna("").str.strip()
    reasons = {
        "cancelled": raw["InvoiceNo"].str.startswith("C"),
        "no_customer": raw["CustomerID"].isna(),
        "non_positive_quantity": raw["Quantity"] <= 0,
        "non_product": ~raw["StockCode"].str.strip().str.fullmatch(PRODUCT_CODE),
        "empty_description": description == "",
    }
    keep = pd.Series(True, index=raw.index)
    for reason in DROP_REASONS:
        hit = keep & reasons[reason]
        report.dropped[reason] = int(hit.sum())
        keep &= ~hit
    kept = raw[keep].assign(Description=description[keep], StockCode=raw["StockCode"][keep].str.strip())
    report.rows_kept = len(kept)
    return kept


def to_interactions(kept: pd.DataFrame) -> pd.DataFrame:
    """Cleaned rows as interactions: one purchase per invoice line, the invoice as the basket."""
    return pd.DataFrame(
        {
            "user_id": kept["CustomerID"].astype("int64").astype(str),
            "item_id": kept["StockCode"],
            # The export's times are the shop's local (UK) times without a zone; read as UTC. Only order
            # and gaps matter here, and BST shifts them by one hour at most.
            "ts": pd.to_datetime(kept["InvoiceDate"], format="ISO8601", utc=True),
            "event": "purchase",
            "basket": kept["InvoiceNo"],
        }
    )


def to_catalog(kept: pd.DataFrame) -> pd.DataFrame:
    """One row per product: its most frequent description as title, its median unit price."""
    counts = kept.groupby(["StockCode", "Description"]).size().rename("n").reset_index()
    # Most frequent first; equal counts fall back to the alphabetically first text, so reruns agree.
    counts = counts.sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
    titles = counts.drop_duplicates("StockCode").set_index("StockCode")["Description"]
    price = kept.groupby("StockCode")["UnitPrice"].median()
    return pd.DataFrame({"item_id": titles.index, "title": titles.to_numpy(), "price": price[titles.index].to_numpy()})


def convert_online_retail(src: Path, out_dir: Path) -> ConvertReport:
    """Convert the Online Retail CSV at `src` into `out_dir`/interactions.parquet and catalog.parquet."""
    src, out_dir = Path(src), Path(out_dir)
    report = ConvertReport(source=str(src))
    kept = clean_online_retail(read_online_retail(src), report)
    interactions = to_interactions(kept)
    write_interactions(interactions, out_dir / "interactions.parquet")
    write_catalog(to_catalog(kept), out_dir / "catalog.parquet")
    report.users = int(interactions["user_id"].nunique())
    report.items = int(interactions["item_id"].nunique())
    report.baskets = int(interactions["basket"].nunique())
    report.first_ts = interactions["ts"].min().isoformat()
    report.last_ts = interactions["ts"].max().isoformat()
    log.info("converted %s: kept %d of %d rows", src, report.rows_kept, report.rows_read)
    return report
