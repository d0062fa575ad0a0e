"""Text neighbours for a scorer: the catalog's title vectors in memory, kept current from Redis.

`TextIndex` is an exact index: nearest neighbours by cosine are one matrix product over every item.
For a catalog of a few thousand items with vectors of a few hundred dimensions that is a few million
multiply-adds, well under a millisecond on one core, and the answer is exact. An approximate index
(faiss, usearch: HNSW or IVF) starts to pay from roughly a few hundred thousand items, where the
product's cost grows past the scorer's per-batch budget; below that it adds build time, memory and
recall loss for nothing.

`CatalogFollower` loads the whole catalog and one encoder version's vectors, then follows the change log
(`{rs:catalog}:changes`, stream/catalogstore.py) with `refresh()`; a scorer's follower also follows the
active encoder, so a `catalog reembed` swaps every scorer's index without a restart.
"""

import logging
import time
from collections.abc import Collection

import numpy as np

from rankstream.stream.catalogstore import DEL, PUT, RELOAD, read_changes, read_snapshot, stream_id, unpack
from rankstream.stream.redis_client import RedisClient

log = logging.getLogger(__name__)


class TextIndex:
    """Item ids and a float32 matrix of their unit vectors, one row each; exact max-cosine search."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._ids)

    def vector(self, item: str) -> np.ndarray:
        """The item's row (KeyError if it is not indexed)."""
        return self._matrix[self._rows[item]]

    def put(self, item: str, vector: np.ndarray) -> None:
        """Add an item, or replace its vector in place (its row keeps its place)."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape != (self.dim,):
            raise ValueError(f"vector of {item!r} has {vec.size} dimensions, the index {self.dim}")
        row = self._rows.get(item)
        if row is not None:
            self._matrix[row] = vec
            return
        if len(self._ids) == self._matrix.shape[0]:
            grown = np.zeros((max(16, 2 * len(self._ids)), self.dim), dtype=np.float32)
            grown[: len(self._ids)] = self._matrix[: len(self._ids)]
            self._matrix = grown
        self._rows[item] = len(self._ids)
        self._matrix[len(self._ids)] = vec
        self._ids.append(item)

    def remove(self, item: str) -> bool:
        """Remove an item (the last row takes its place); False when it was not indexed."""
        row = self._rows.pop(item, None)
        if row is None:
            return False
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._ids[row] = moved
            self._rows[moved] = row
            self._matrix[row] = self._matrix[last]
        self._ids.pop()
        return True

    def similarity(self, query_vectors: np.ndarray, items: Collection[str]) -> dict[str, float]:
        """Each indexed one of `items` -> its max cosine to the query vectors (the score `nearest` ranks by)."""
        rows = [(item, self._rows[item]) for item in items if item in self._rows]
        if not rows:
            return {}
        queries = np.asarray(query_vectors, dtype=np.float32).reshape(-1, self.dim)
        if queries.shape[0] == 0:
            return {}
        scores = (self._matrix[[r for _, r in rows]] @ queries.T).max(axis=1)
        return {item: float(x) for (item, _), x in zip(rows, scores, strict=True)}

    def nearest(self, query_vectors: np.ndarray, n: int, exclude: Collection[str] = ()) -> list[str]:
        """The `n` items most similar to any of the query vectors (max cosine over the queries, rows are
        unit vectors), best first, ties in row order; `exclude` never comes back."""
        size = len(self._ids)
        if n <= 0 or size == 0:
            return []
        queries = np.asarray(query_vectors, dtype=np.float32).reshape(-1, self.dim)
        if queries.shape[0] == 0:
            return []
        scores = (self._matrix[:size] @ queries.T).max(axis=1)
        for item in exclude:
            row = self._rows.get(item)
            if row is not None:
                scores[row] = -np.inf
        order = np.argsort(-scores, kind="stable")
        return [self._ids[r] for r in order[:n] if scores[r] != -np.inf]


class CatalogFollower:
    """One process's copy of the catalog (titles) and a TextIndex of one encoder version's vectors.

    `load()` reads everything; `refresh()` applies the change entries logged since (call it between
    batches; it does not block). An item whose vector is missing or unreadable is in `catalog` but not
    in `index` until a change brings a usable one.
    """

    def __init__(
        self, client: RedisClient, version: str, dim: int, *, max_changes: int = 10_000, follow: bool = False
    ) -> None:
        """`version`, `dim`: the encoder whose vectors to index; with `follow`, the active one instead whenever
        `{rs:catalog}:encoder` names one (read at every `load`, which an activation's `reload` triggers)."""
        self._client = client
        self.version = version
        self.dim = dim
        self._follow = follow
        self._max_changes = max_changes
        self.catalog: dict[str, str] = {}
        self.index = TextIndex(dim)
        self.last_id = "0-0"  # the newest change entry applied
        self.applied_at: float | None = None  # time.time() of the last refresh that applied changes (or load)
        self.loaded = False

    async def load(self) -> None:
        """Read the whole catalog and this version's vectors (StoreError if Redis fails)."""
        snap = await read_snapshot(self._client, self.version, self.dim, follow=self._follow)
        if snap.version != self.version:
            log.info("catalog: encoder %s (dim %d) is active, was %s", snap.version, snap.dim, self.version)
        self.version, self.dim = snap.version, snap.dim
        index = TextIndex(self.dim)
        for item, raw in snap.vectors.items():
            if item in snap.titles:
                self._index_into(index, item, raw)
        self.catalog, self.index, self.last_id = snap.titles, index, snap.last_id
        self.applied_at = time.time()
        self.loaded = True
        missing = len(self.catalog) - len(index)
        log.info(
            "catalog loaded: %d items, %d indexed with encoder %s (%d without a usable vector), changes after %s",
            len(self.catalog),
            len(index),
            self.version,
            missing,
            self.last_id,
        )

    async def refresh(self) -> int:
        """Apply the change entries logged since the last one applied; returns how many were applied.

        A `reload` entry, or entries lost to trimming before they were read, read everything again.
        """
        if not self.loaded:
            raise RuntimeError("CatalogFollower.refresh before load")
        total = 0
        while True:
            changes = await read_changes(self._client, self.version, self.last_id, self._max_changes)
            if changes.gap or any(op == RELOAD for _, _, op in changes.entries):
                log.info(
                    "catalog change log %s: reading the whole catalog again", "trimmed" if changes.gap else "reload"
                )
                await self.load()
                return total + 1
            if not changes.entries:
                return total
            for eid, item, op in changes.entries:
                if op in (PUT, DEL) and item:
                    self._apply(item, changes.titles.get(item), changes.vectors.get(item))
                if stream_id(eid) > stream_id(self.last_id):
                    self.last_id = eid
            total += len(changes.entries)
            self.applied_at = time.time()
            if len(changes.entries) < self._max_changes:
                return total

    def _apply(self, item: str, title: str | None, vector: bytes | None) -> None:
        """Make the copy match what Redis holds now for `item` (the entry only says it changed)."""
        if title is None:
            self.catalog.pop(item, None)
            self.index.remove(item)
            return
        self.catalog[item] = title
        if vector is None or not self._index_into(self.index, item, vector):
            self.index.remove(item)

    def _index_into(self, index: TextIndex, item: str, raw: bytes) -> bool:
        try:
            index.put(item, unpack(raw, self.dim))
        except ValueError as exc:
            log.error(
                "catalog: the %s vector of %r is unusable, item left out of the text index: %s", self.version, item, exc
            )
            return False
        return True
