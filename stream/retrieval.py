"""Merged candidates: co-visitation (live tables, trending fill) and text neighbours in one list.

One definition for the scorer and the evaluation, so what is measured offline is what is served. The
merged order: the first `MERGE_HEAD` items of the co-visitation list, then one text neighbour and one
item of that list in turn, each item once; when one source runs out the other fills the rest, up to
`n`. The head keeps what co-visitation ranks best where a list shows it first; the turns give text a
fixed share of the rest, whatever the co-visitation list holds there. A text neighbour is an item
whose title vector is closest to those of the user's newest items (`stream.textindex`): the only
source that can propose an item nobody has bought yet.
"""

from collections.abc import Sequence

MERGE_HEAD = 10


def merge(primary: Sequence[str], secondary: Sequence[str], n: int, head: int = MERGE_HEAD) -> list[str]:
    """The first `head` of `primary`, then one of `secondary` and one of `primary` in turn, each item once,
    up to `n` (the merged order of the module doc)."""
    out: list[str] = []
    taken: set[str] = set()

    def take(source: Sequence[str], at: int) -> int:
        """Appends the first not-yet-taken item of `source` from `at`; returns the position after it."""
        while at < len(source):
            item = source[at]
            at += 1
            if item not in taken:
                taken.add(item)
                out.append(item)
                break
        return at

    p = s = 0
    while p < len(primary) and len(out) < min(head, n):
        p = take(primary, p)
    while len(out) < n and (p < len(primary) or s < len(secondary)):
        s = take(secondary, s)
        if len(out) < n:
            p = take(primary, p)
    return out
