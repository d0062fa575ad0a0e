"""Text as a candidate source and as a signal, from item vectors made without training (pure numpy).

Definitions (also in docs/results.md, "Text retrieval, pretrained (no training)"):

- An item's text similarity to a user is the highest cosine between its title vector and those of the
  user's `RECENT_ITEMS` newest history items (the items whose votes make the co-visitation order);
  recent items without a vector are left out. Vectors are unit length, so a cosine is a dot product.
- Text neighbours: the catalog items with the highest similarity, the user's whole history excluded,
  ties in the vectors' row order. The search is exact, every vector against every recent one: at a
  few thousand items that is one small matrix product per user, and an approximate index would only
  add error.
- The merged order: `stream.retrieval.interleave`, the one the scorer serves with RANKSTREAM_TEXT_CANDIDATES.
"""

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rankstream.stream.candidates import in_catalog
from rankstream.stream.retrieval import interleave
from rankstream.stream.signals import RECENT_ITEMS


@dataclass(frozen=True)
class OrderNames:
    """What the three text orders are called in a report, by where their vectors came from."""

    text: str
    merged: str
    cosine: str


# The orders `rankstream eval --end-to-end --text` adds: from the encoder as shipped (no training), or from
# one fine-tuned on co-purchase (`--encoder DIR`).
PRETRAINED = OrderNames("text-pretrained", "merged-pretrained", "covisit-live-cosine")
TUNED = OrderNames("text-tuned", "merged-tuned", "covisit-live-cosine-tuned")
TEXT, MERGED, COSINE = PRETRAINED.text, PRETRAINED.merged, PRETRAINED.cosine


@dataclass(frozen=True)
class ItemVectors:
    """Unit-length item vectors: row `k` of `matrix` is item `ids[k]`."""

    ids: tuple[str, ...]
    matrix: np.ndarray  # [items, dim] float32, rows of L2 norm 1
    row: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or len(self.ids) != self.matrix.shape[0]:
            raise ValueError(f"{len(self.ids)} ids for a matrix of shape {self.matrix.shape}")
        object.__setattr__(self, "row", {item: k for k, item in enumerate(self.ids)})

    def rows(self, items: Iterable[str]) -> list[int]:
        """The rows of the `items` that have a vector, in their order."""
        return [self.row[i] for i in items if i in self.row]


def similarity(vectors: ItemVectors, history: Sequence[str], recent: int = RECENT_ITEMS) -> np.ndarray | None:
    """Every item's similarity to the user (one value per row of `vectors`), or None when none of the
    `recent` newest history items has a vector."""
    rows = vectors.rows(history[:recent])
    if not rows:
        return None
    sims: np.ndarray = (vectors.matrix[rows] @ vectors.matrix.T).max(axis=0)
    return sims


def text_neighbours(vectors: ItemVectors, history: Sequence[str], n: int, recent: int = RECENT_ITEMS) -> list[str]:
    """Up to `n` items most similar to the user's `recent` newest items, best first, none of `history`
    (newest first); ties in row order. Empty when no recent item has a vector."""
    sims = similarity(vectors, history, recent)
    if sims is None or n <= 0:
        return []
    sims = sims.astype(np.float64)
    sims[vectors.rows(set(history))] = -np.inf
    order = np.argsort(-sims, kind="stable")
    return [vectors.ids[k] for k in order[:n] if np.isfinite(sims[k])]


def by_similarity(
    vectors: ItemVectors, history: Sequence[str], candidates: Sequence[str], recent: int = RECENT_ITEMS
) -> list[str]:
    """`candidates` re-ordered by their similarity to the user, highest first; ties, and candidates
    without a vector (placed last), keep their order. Unchanged when no recent item has a vector."""
    sims = similarity(vectors, history, recent)
    if sims is None:
        return list(candidates)
    score = [float(sims[vectors.row[c]]) if c in vectors.row else -np.inf for c in candidates]
    return [candidates[k] for k in np.argsort(-np.asarray(score), kind="stable")]


@dataclass(frozen=True)
class TextNote:
    """Which item vectors made the text orders."""

    encoder: str
    items: int  # catalog items with a vector
    dim: int


def text_orders(
    vectors: ItemVectors,
    histories: Sequence[Sequence[str]],
    live: Sequence[Sequence[str]],
    catalog: Mapping[str, str],
    n: int,
    names: OrderNames = PRETRAINED,
) -> dict[str, list[list[str]]]:
    """Each basket's text orders (text neighbours, merged, live by cosine, under `names`), from its user's
    history (newest first) and its co-visitation order on the live tables, each at most `n` items with a
    catalog title."""
    text = [in_catalog(text_neighbours(vectors, h, n), catalog) for h in histories]
    return {
        names.text: text,
        names.merged: [interleave(lv, tx, n) for lv, tx in zip(live, text, strict=True)],
        names.cosine: [by_similarity(vectors, h, lv) for h, lv in zip(histories, live, strict=True)],
    }


def retrieval_recall(
    vectors: ItemVectors,
    baskets: Sequence[tuple[Sequence[str], Collection[str]]],
    catalog: Mapping[str, str],
    n: int = 50,
) -> float:
    """Mean over (history newest first, positives) baskets of the share of positives among the user's `n`
    text neighbours with a catalog title: the bi-encoder's own recall, no other source beside it."""
    if not baskets:
        return float("nan")
    shares = []
    for history, positives in baskets:
        found = set(in_catalog(text_neighbours(vectors, history, n), catalog))
        shares.append(len(found.intersection(positives)) / len(positives))
    return float(np.mean(shares))
