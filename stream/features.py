"""How a (user, candidate) pair becomes text: the single definition shared by training, eval and serving.

A model artifact records `PAIR_FORMAT`; the scorer refuses an artifact whose format it does not speak,
so a change here must bump the format name.
"""

from collections.abc import Sequence

PAIR_FORMAT = "history5-covisrank-v1"
HISTORY_ITEMS = 5
_SEP = " ; "


def history_text(titles: Sequence[str]) -> str:
    """The query side: the user's most recent item titles, newest first.

    Newest first so that truncation (which cuts the end of the first segment) drops the oldest items.
    """
    return _SEP.join(t.strip().lower() for t in titles[:HISTORY_ITEMS])


def candidate_text(title: str, rank: int) -> str:
    """The document side: the candidate's 0-based position in the co-visitation order, then its title.

    Titles alone rank far below co-visitation on this data; the position gives the cross-encoder the
    non-neural signal to start from, so what it learns from text is a correction to a good prior.
    """
    return f"{rank + 1} | {title.strip().lower()}"
