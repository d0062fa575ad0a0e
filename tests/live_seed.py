"""Live tables for tests that need given neighbour lists rather than events: one share whose weights
rank each item's neighbours in the order given, seeded the way `rankstream load` seeds."""

import time
from collections.abc import Mapping, Sequence

from rankstream.stream.live import DAY_MS, ItemCounts, LiveParams, Share
from rankstream.stream.livestore import seed
from rankstream.stream.signals import ItemStats
from rankstream.stream.store import Store


def share_from_lists(
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    item_stats: Mapping[str, ItemStats] | None = None,
    now_ms: int | None = None,
) -> Share:
    """A share that reads back as these lists; item statistics as they would read at `now_ms`."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    today = now_ms // DAY_MS
    share = Share(LiveParams())
    for item, nbs in neighbours.items():
        share.neighbours[item] = {nb: float(len(nbs) - rank) for rank, nb in enumerate(nbs)}
    for item, st in (item_stats or {}).items():
        days = {today: st.baskets_7d, today - 10: st.baskets_30d - st.baskets_7d}
        share.counts[item] = ItemCounts(
            st.baskets, now_ms - st.age_days * DAY_MS, st.buyers, {d: n for d, n in days.items() if n}
        )
    share.trend = [(item, len(trending) - rank) for rank, item in enumerate(trending)]
    share.trend_day = today
    return share


async def seed_lists(
    store: Store,
    catalog: Mapping[str, str],
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    item_stats: Mapping[str, ItemStats] | None = None,
    topic: str = "clicks",
) -> None:
    """The catalog and one share holding these lists, in the Redis behind `store`."""
    await store.load_catalog(dict(catalog))
    await seed(store.client, topic, [share_from_lists(neighbours, trending, item_stats)], LiveParams())
