"""The item tables a scorer reads: catalog, trending and item statistics at start, neighbours on demand."""

from rankstream.stream.errors import RankstreamError
from rankstream.stream.signals import ItemStats
from rankstream.stream.store import Store

_NEIGHBOUR_CACHE_MAX = 200_000


class Tables:
    """One scorer's copy of the tables in Redis. Neighbour lists are cached, bounded, and re-read after."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.catalog: dict[str, str] = {}
        self.trending: list[str] = []
        self.item_stats: dict[str, ItemStats] = {}
        self._neighbours: dict[str, list[str]] = {}

    async def load(self, *, need_item_stats: bool) -> None:
        """Read the catalog, trending items and item statistics; RankstreamError if `load` never ran."""
        self.catalog = await self._store.read_catalog()
        if not self.catalog:
            raise RankstreamError("the catalog in Redis is empty: run `rankstream load` first")
        self.trending = await self._store.read_trending()
        self.item_stats = await self._store.read_item_stats()
        if not self.item_stats and need_item_stats:
            raise RankstreamError("the item statistics in Redis are empty: run `rankstream load` again")

    async def neighbours_for(self, items: list[str]) -> dict[str, list[str]]:
        """Co-visitation neighbours of `items`, from the cache or one Redis read for the missing ones."""
        missing = [it for it in items if it not in self._neighbours]
        if missing:
            if len(self._neighbours) > _NEIGHBOUR_CACHE_MAX:
                self._neighbours.clear()  # bounded memory; the tables are cheap to re-read
            self._neighbours.update(await self._store.read_neighbours(missing))
        return {it: self._neighbours.get(it, []) for it in items}

    def sample_titles(self, n: int = 50) -> list[str]:
        """Some catalog titles, for warming a new model up at serving shapes."""
        return [t for _, t in zip(range(n), self.catalog.values(), strict=False)]
