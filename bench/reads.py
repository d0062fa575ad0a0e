"""`python -m rankstream.bench.reads`: what a scorer pays to re-read one item's live-table values, by how
many of the item's shares changed since its last read, and how many change between reads on real events.

Offline, no services, one process. The shares are `seeded` (the history before the test split, as `load`
seeds them); then the test period's events are applied in order, `--window` events at a time: the events
the stream carries in one `RANKSTREAM_TABLES_MAX_AGE_MS` at a given rate (300 = 0.5 s at 600 events/s).
After each window, every item whose values changed in at least one share is one re-read a scorer would
make if it needed the item, and the number of its shares that changed is counted.

The cost of a re-read is timed on those items' real stored values (`dump_neighbours` of each share's
`top`, `ItemCounts.dump`), through the functions `stream.tables.Tables` calls: parse the changed shares
(`parse_neighbours`, `ItemCounts.parse`), reuse the others' parsed values, merge all (`merge_neighbours`,
`merge_counts`). Parsing every share of a changed item is what each re-read cost before the scorer kept
parsed values per share, so the two are compared on the same items in the same run.
"""

import argparse
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rankstream.data.live_replay import seeded
from rankstream.data.prepare import Prepared
from rankstream.ops.load import split_events
from rankstream.stream.live import (
    ItemCounts,
    Share,
    dump_neighbours,
    event_ms,
    merge_counts,
    merge_neighbours,
    parse_neighbours,
    partition_of,
)


@dataclass(frozen=True)
class ReadsBench:
    events: int
    window: int
    partitions: int
    rereads: int  # (item, window) pairs with a change in at least one share
    changed_shares: dict[int, int]  # k -> re-reads with k shares changed
    timed: int  # re-reads timed (the last `--timed` windows' changed items)
    us_parse_all: float  # mean µs per re-read, every non-empty share parsed, then merged
    us_parse_changed: float  # mean µs per re-read, the changed shares parsed, the others reused, merged
    ratio: float


def _values(share: Share, item: str) -> tuple[str | None, str | None]:
    top = share.top(item)
    counts = share.counts.get(item)
    return (dump_neighbours(dict(top)) if top else None, counts.dump() if counts and counts.baskets else None)


def _reread(raw: list[tuple[str | None, str | None]], parsed: list[tuple[object, object]], changed: set[int], n: int):  # type: ignore[no-untyped-def]
    """One re-read as the scorer makes it: parse the shares in `changed`, reuse the rest, merge."""
    nbs, counts = [], []
    for s, (nb_raw, c_raw) in enumerate(raw):
        if s in changed:
            nbs.append(parse_neighbours(nb_raw) if nb_raw else None)
            counts.append(ItemCounts.parse(c_raw) if c_raw else None)
        else:
            nb, c = parsed[s]
            nbs.append(nb)  # type: ignore[arg-type]
            counts.append(c)  # type: ignore[arg-type]
    return merge_neighbours(nbs, n), merge_counts(counts)


def run(data: Path, *, window: int, partitions: int, timed_windows: int, limit: int | None) -> ReadsBench:
    prepared = Prepared.load(data)
    tables = seeded(prepared, partitions)
    shares = tables.shares
    for s in shares:
        s.take_dirty()
    evs = split_events(data, "test", limit)
    n = tables.params.neighbours
    dist: Counter[int] = Counter()
    samples: list[tuple[list[tuple[str | None, str | None]], set[int]]] = []
    windows = (len(evs) + window - 1) // window
    for w in range(windows):
        changed: dict[str, set[int]] = {}
        for e in evs[w * window : (w + 1) * window]:
            p = partition_of(e.user_id, partitions)
            shares[p].apply(e.user_id, e.item_id, event_ms(e))
            dirty = shares[p].take_dirty()
            for it in dirty.neighbours | dirty.counts:
                changed.setdefault(it, set()).add(p)
        for it, ps in changed.items():
            dist[len(ps)] += 1
            if w >= windows - timed_windows:
                samples.append(([_values(s, it) for s in shares], ps))
    # Time both ways on the same values; the reused parsed values are those of the same raw (as in the scorer).
    parsed_all = [
        [(parse_neighbours(nb) if nb else None, ItemCounts.parse(c) if c else None) for nb, c in raw]
        for raw, _ in samples
    ]
    everything = set(range(partitions))
    t_all, t_changed = [], []
    for _ in range(3):  # best of three passes: the machine is shared
        t0 = time.perf_counter()
        for (raw, _), parsed in zip(samples, parsed_all, strict=True):
            _reread(raw, parsed, everything, n)
        t_all.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for (raw, ps), parsed in zip(samples, parsed_all, strict=True):
            _reread(raw, parsed, ps, n)
        t_changed.append(time.perf_counter() - t0)
    per = 1e6 / max(1, len(samples))
    us_all, us_changed = min(t_all) * per, min(t_changed) * per
    return ReadsBench(
        events=len(evs),
        window=window,
        partitions=partitions,
        rereads=sum(dist.values()),
        changed_shares=dict(sorted(dist.items())),
        timed=len(samples),
        us_parse_all=round(us_all, 2),
        us_parse_changed=round(us_changed, 2),
        ratio=round(us_changed / us_all, 3) if us_all else 0.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m rankstream.bench.reads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("var/data"))
    ap.add_argument("--window", type=int, default=300, help="events between two reads of an item")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--timed-windows", type=int, default=40, help="time the re-reads of the last N windows")
    ap.add_argument("--events", type=int, default=None, help="test events to replay (default: all)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.data, window=a.window, partitions=a.partitions, timed_windows=a.timed_windows, limit=a.events)
    if a.json:
        print(json.dumps(asdict(r)))
        return
    total = max(1, r.rereads)
    print(f"{r.events} test events, {r.partitions} shares, a read every {r.window} events: {r.rereads} re-reads")
    for k, c in r.changed_shares.items():
        print(f"  {k} share(s) changed: {c:>8} ({c / total:.1%})")
    mean_k = statistics.fmean([k for k, c in r.changed_shares.items() for _ in range(c)]) if r.rereads else 0
    print(f"  mean {mean_k:.2f} of {r.partitions}")
    print(f"timed {r.timed} re-reads, µs each: every share parsed {r.us_parse_all}, ", end="")
    print(f"the changed ones parsed {r.us_parse_changed}")
    print(f"  ratio {r.ratio}")


if __name__ == "__main__":
    main()
