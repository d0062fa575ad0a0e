"""Co-visitation candidate generation, also the non-neural baseline order every model is compared to.

Pure Python on purpose: the scorer, the evaluation and the training-data builder all call this one
function, so the candidate lists a model is trained, evaluated and served on are the same.
"""

from collections.abc import Iterable, Mapping, Sequence


def covisit_votes(history: Sequence[str], neighbours: Mapping[str, Sequence[str]], recent: int = 5) -> dict[str, float]:
    """The co-visitation vote of every neighbour of the `recent` newest history items (newest first):
    weight 1/(1+position) * 1/(1+neighbour rank), in the order the neighbours are first met."""
    votes: dict[str, float] = {}
    for pos, item in enumerate(history[:recent]):
        for rank, nb in enumerate(neighbours.get(item, ())):
            votes[nb] = votes.get(nb, 0.0) + 1.0 / ((1 + pos) * (1 + rank))
    return votes


def covisit_candidates(
    history: Sequence[str],
    neighbours: Mapping[str, Sequence[str]],
    trending: Sequence[str],
    n: int,
    exclude: Iterable[str] = (),
    recent: int = 5,
) -> list[str]:
    """Up to `n` candidate item ids for a user, best first by co-visitation (`covisit_votes`).

    `history` is newest first; ties keep first-seen order. Items in `history` or `exclude` are never
    proposed. When co-visitation yields fewer than `n`, trending items fill the list.
    """
    seen = set(history)
    seen.update(exclude)
    votes = {nb: v for nb, v in covisit_votes(history, neighbours, recent).items() if nb not in seen}
    # sorted() is stable, so equal votes keep the order in which they were first met.
    ranked = sorted(votes, key=lambda k: -votes[k])[:n]
    if len(ranked) < n:
        taken = set(ranked)
        for item in trending:
            if len(ranked) >= n:
                break
            if item not in seen and item not in taken:
                ranked.append(item)
                taken.add(item)
    return ranked


def in_catalog(candidates: Iterable[str], catalog: Mapping[str, str]) -> list[str]:
    """Candidates as the scorer ranks them: each once, in order, only those with a catalog title.

    Training pairs, the evaluation and the position prior read candidates through this, so a model
    learns and is judged on the lists the scorer really serves."""
    return [c for c in dict.fromkeys(candidates) if c in catalog]
