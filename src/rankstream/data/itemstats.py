"""Per-item sales statistics for the serve-time signals (`rankstream.stream.signals.ItemStats`).

Computed from one frame (the train split, at prepare time): the frozen statistics. Training, evaluation
and the scorer read the live ones instead (`stream.live.ItemCounts.stats_at` at each basket's time).
"""

import logging

import pandas as pd

from rankstream.data.formats import basket_keys
from rankstream.stream.signals import ItemStats

log = logging.getLogger(__name__)


def item_stats(frame: pd.DataFrame) -> dict[str, ItemStats]:
    """Every item's `ItemStats` (basket counts overall and in its recent windows, distinct buyers, age), as of
    `frame`'s end."""
    if frame.empty:
        return {}
    rows = pd.DataFrame(
        {
            "key": basket_keys(frame).to_numpy(),
            "item_id": frame["item_id"].to_numpy(),
            "user_id": frame["user_id"].to_numpy(),
            "ts": frame["ts"].to_numpy(),
        }
    ).drop_duplicates(["key", "item_id"])  # an item twice in a basket is one basket
    end = rows["ts"].max()
    items = rows.groupby("item_id")
    table = pd.DataFrame(
        {
            "baskets": items.size(),
            "buyers": items["user_id"].nunique(),
            "age_days": (end - items["ts"].min()).dt.days,
        }
    )
    for days in (7, 30):
        recent = rows.loc[rows["ts"] > end - pd.Timedelta(days=days), "item_id"].value_counts()
        table[f"baskets_{days}d"] = recent.reindex(table.index, fill_value=0)
    out = {
        str(item): ItemStats(int(b), int(b7), int(b30), int(u), int(a))
        for item, b, b7, b30, u, a in zip(
            table.index,
            table["baskets"],
            table["baskets_7d"],
            table["baskets_30d"],
            table["buyers"],
            table["age_days"],
            strict=True,
        )
    }
    log.info("item statistics for %d items up to %s", len(out), end)
    return out


def stats_to_json(stats: dict[str, ItemStats]) -> dict[str, list[int]]:
    """The file form: item -> [baskets, baskets_7d, baskets_30d, buyers, age_days]."""
    return {k: [s.baskets, s.baskets_7d, s.baskets_30d, s.buyers, s.age_days] for k, s in stats.items()}


def stats_from_json(raw: dict[str, list[int]]) -> dict[str, ItemStats]:
    return {k: ItemStats(*v) for k, v in raw.items()}
