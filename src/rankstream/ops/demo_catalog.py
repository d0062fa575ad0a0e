"""The demo's new items: published on the catalog topic while the stream runs, embedded by the catalog job,
and servable by the scorer within a second, with no restart and no sale yet.

Each new item copies the title of an item the replay's users clicked (two often, one seldom), with a
word added. Once the scorer reports that it applied the item's change entry, a user with no history
clicks the item it copies, and that user's list is read back from Redis: with text retrieval on, the new
item is among that user's candidates (the nearest title), and the ranker decides whether it makes the
top k, which the demo says either way.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from rankstream.ops.catalog import publish, wait_applied
from rankstream.ops.replay import replay
from rankstream.stream.catalog import CatalogItem
from rankstream.stream.catalogstore import newest_change
from rankstream.stream.events import ClickEvent
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

NEW_WORD = "deluxe"
_POLL_S = 0.05
_WAIT_S = 30.0


@dataclass(frozen=True)
class NewItems:
    """What the new-items step did: lines to print, clicks it sent, and whether every item was served."""

    lines: list[str]
    clicks: int
    ok: bool


def sources(evs: Sequence[ClickEvent], catalog: dict[str, str], n: int) -> list[tuple[str, int]]:
    """Items to copy, with their clicks in `evs`: the `n - 1` most clicked and the least clicked (ties by id),
    titled ones only. A new variant of a best seller competes with items that sell; one of a seldom-sold
    item competes with little: the demo shows both rather than pick the flattering case."""
    if n <= 0:
        return []
    counts = Counter(e.item_id for e in evs if e.item_id in catalog)
    ranked = sorted(counts, key=lambda it: (-counts[it], it))
    return [(it, counts[it]) for it in ranked[: n - 1] + ranked[n - 1 :][-1:]]


async def show_new_items(settings: Settings, evs: Sequence[ClickEvent], replica: str, n: int = 3) -> NewItems:
    """Publish `n` new items one at a time; for each, time it to servable by `replica`, then probe a list."""
    store = Store.from_settings(settings)
    try:
        catalog = await store.read_catalog()
        stamp = time.strftime("%H%M%S")
        at = max(e.ts for e in evs) + timedelta(minutes=1)
        lines: list[str] = []
        ok = True
        picked = sources(evs, catalog, n)
        for k, (source, clicks) in enumerate(picked, 1):
            item = CatalogItem(item_id=f"NEW{k}-{stamp}", title=f"{catalog[source]} {NEW_WORD}")
            servable_s = await _publish_and_wait(settings, store, item, replica)
            lines.append(
                f'\nnew item {item.item_id}: "{item.title.lower()}" ({source}\'s title plus a word; never sold; '
                f"{source} was clicked {clicks} times in the replay)"
            )
            if servable_s is None:
                lines.append(f"  not applied by the scorer within {_WAIT_S:.0f}s: see the catalog job's log")
                ok = False
                continue
            lines.append(
                f"  published on {settings.catalog_topic} -> embedded, servable by the scorer in {servable_s:.2f}s"
            )
            user = f"demo-new-user-{k}-{stamp}"
            await replay([ClickEvent(user_id=user, item_id=source, ts=at)], settings.kafka_bootstrap, settings.topic)
            lines += await _probe(store, user, source, item, catalog)
        return NewItems(lines, len(picked), ok)
    finally:
        await store.close()


async def _publish_and_wait(settings: Settings, store: Store, item: CatalogItem, replica: str) -> float | None:
    """Seconds from publishing `item` until `replica` reports its change entry applied (the writers' clocks,
    as `bench catalog` times it); None after _WAIT_S."""
    after = await newest_change(store.client)
    t0 = time.time()
    await publish(settings, [(item.key(), item.to_bytes())])
    got = await wait_applied(store.client, item.item_id, after, [replica], _WAIT_S, _POLL_S)
    return None if got.servable_ms is None else got.servable_ms / 1000 - t0


async def _probe(store: Store, user: str, source: str, item: CatalogItem, catalog: dict[str, str]) -> list[str]:
    """The list of `user` (who clicked `source` only) once written, the new item marked."""
    deadline = time.monotonic() + _WAIT_S
    rec = await store.read_list(user)
    while rec is None and time.monotonic() < deadline:  # another process writes it: polling is the way
        await asyncio.sleep(_POLL_S)
        rec = await store.read_list(user)
    head = f"  then user {user}, with no history, clicked {source} ({catalog[source].lower()})"
    if rec is None:
        return [head + f": no list within {_WAIT_S:.0f}s"]
    titles = {**catalog, item.item_id: item.title}
    lines = [head + f"; their list, by {rec['model_version']}:"]
    for rank, it in enumerate(rec["items"], 1):
        mark = "   <- the new item" if it["item_id"] == item.item_id else ""
        lines.append(f"   {rank:>2}. {titles.get(it['item_id'], it['item_id']).lower():<45} {it['score']:+.3f}{mark}")
    if item.item_id not in {it["item_id"] for it in rec["items"]}:
        lines.append("  (the new item is not in this top k: the ranker put the items above first)")
    return lines
