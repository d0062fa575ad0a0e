"""Live item tables: co-visitation, basket counts by day, distinct buyers, first sale and trending, moved
by every valid event in event time.

The tables are split into shares, one per partition of the clicks topic. Users are keyed to partitions,
so everything that needs a user's past (their previous basket, whether they bought an item before) lives
in one share, and a share changes only through its partition's events, in offset order. The tables are
the sum of the shares, merged on read (`merge_*`). That split is what makes effectively-once cheap: a
share and the offset it reflects are written together, as absolute values, in one atomic step on one
Redis slot (`stream.livestore`), so replaying events after a crash rewrites the same values instead of
counting twice. The same `Share` replays events offline (`rankstream.data.live_replay`), which is why
training, evaluation and the scorer see the same tables at the same moment.

Pure Python, no I/O.
"""

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka.partitioner import murmur2

from rankstream.stream.events import ClickEvent
from rankstream.stream.signals import NO_STATS, ItemStats

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Forward decay: a co-visit at time t weighs 2^((t - LANDMARK_MS) / half-life). Only ratios are ever
# compared, so no stored weight is rewritten as time passes. The exponent grows by 365 / half-life a
# year and doubles end at 2^1023: at the default 14-day half-life that is 39 years after the landmark
# (2049), at 30 days 84, at 7 days 19 (reseeding with a later landmark is the way out; `load` writes
# every share anew).
LANDMARK_MS = 1_262_304_000_000  # 2010-01-01T00:00:00Z
_TRIM_SLACK = 2  # a share's neighbour map grows to `keep` * this before it is cut back to `keep`


@dataclass(frozen=True)
class LiveParams:
    """What the tables keep. Changing any of these needs the shares reseeded (`rankstream load`)."""

    # 14 days: end to end on the test baskets the live co-visitation order held more of what users bought
    # next than at 30 or 90 days, and as much within a basket (docs/results.md, "The tables' half-life").
    half_life_days: float = 14.0
    next_basket_days: float = 7.0  # a basket's items pair with the same user's next basket within this
    keep: int = 100  # neighbours per item kept in each share (the merged list serves the top `neighbours`)
    share_top: int = 60  # each share's heaviest neighbours per item, the part readers merge
    neighbours: int = 30
    trending: int = 100
    trending_days: int = 30
    window_days: int = 31  # day buckets kept per item: enough for the 30-day window

    def weight(self, ts_ms: int) -> float:
        return math.pow(2.0, (ts_ms - LANDMARK_MS) / (self.half_life_days * DAY_MS))

    def weights_end_ms(self) -> float:
        """The time from which `weight` overflows a double (2^1024): the tables hold no event from then on."""
        return LANDMARK_MS + 1024 * self.half_life_days * DAY_MS


@dataclass
class ItemCounts:
    """One item's sales in one share (or merged): baskets by day, first sale, distinct buyers."""

    baskets: int = 0
    first_ms: int = 0
    buyers: int = 0
    days: dict[int, int] = field(default_factory=dict)  # day index (ms // DAY_MS) -> baskets that day

    def stats_at(self, ts_ms: int) -> ItemStats:
        """The signals' `ItemStats` at `ts_ms`: 7- and 30-day windows end on its day, age from the first sale."""
        today = ts_ms // DAY_MS
        b7 = b30 = 0
        for d, n in self.days.items():  # one pass
            if today - 30 < d <= today:
                b30 += n
                if d > today - 7:
                    b7 += n
        age = self.age_days(ts_ms)
        return ItemStats(baskets=self.baskets, baskets_7d=b7, baskets_30d=b30, buyers=self.buyers, age_days=age)

    def age_days(self, ts_ms: int) -> int:
        """Whole days from the first sale to `ts_ms` (0: never sold)."""
        return max(0, (ts_ms - self.first_ms) // DAY_MS) if self.baskets else 0

    def dump(self) -> str:
        days = ",".join(f"{d}:{n}" for d, n in sorted(self.days.items()))
        return f"{self.baskets},{self.first_ms},{self.buyers};{days}"

    @classmethod
    def parse(cls, raw: str) -> "ItemCounts":
        head, _, days = raw.partition(";")
        baskets, first_ms, buyers = (int(x) for x in head.split(","))
        parsed = {int(d): int(n) for d, n in (p.split(":") for p in days.split(",") if p)}
        return cls(baskets, first_ms, buyers, parsed)


class SalesView:
    """Merged `ItemCounts` as a scorer reads them: never changed after they are made, so the statistics
    at one day and age are computed once and reused for every user scored then (a hot item is a
    candidate for most users, and a pass over its month of day buckets for each was a tenth of the
    scorer's loop)."""

    __slots__ = ("counts", "_at", "_stats")

    def __init__(self, counts: ItemCounts) -> None:
        self.counts = counts
        self._at = (-1, -1)  # (day, age in days) of `_stats`
        self._stats = NO_STATS

    def stats_at(self, ts_ms: int) -> ItemStats:
        """`ItemCounts.stats_at`, the same values."""
        at = (ts_ms // DAY_MS, self.counts.age_days(ts_ms))  # everything `stats_at` reads of the time
        if at != self._at:
            self._at, self._stats = at, self.counts.stats_at(ts_ms)
        return self._stats


@dataclass
class UserBaskets:
    """A user's open basket (all their events at one time) and the one before it."""

    ts_ms: int
    items: list[str]
    prev_ts_ms: int | None = None
    prev_items: list[str] = field(default_factory=list)

    def dump(self) -> list:
        return [self.ts_ms, self.items, self.prev_ts_ms, self.prev_items]


@dataclass
class Dirty:
    """What changed in a share since it was last written: the fields to write, as absolute values."""

    neighbours: set[str] = field(default_factory=set)
    counts: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    bought: list[str] = field(default_factory=list)  # new user\x1fitem members
    trend: bool = False


class Share:
    """One partition's part of the tables, exact, changed only by `apply` in the partition's order."""

    def __init__(self, params: LiveParams) -> None:
        self.params = params
        self.offset = -1  # the last offset applied (-1: none; the seed history is not an offset)
        self.last_ms = 0  # the newest event time applied
        self.neighbours: dict[str, dict[str, float]] = {}
        self.counts: dict[str, ItemCounts] = {}
        self.users: dict[str, UserBaskets] = {}
        self.bought: set[str] = set()
        self.trend: list[tuple[str, int]] = []  # (item, baskets) in the trending window before `trend_day`
        self.trend_day = -1
        self.dirty = Dirty()

    def apply(self, user: str, item: str, ts_ms: int, offset: int | None = None) -> None:
        """One valid event: `item` joins `user`'s basket at `ts_ms` (all their events at one time)."""
        if offset is not None:
            self.offset = offset
        self._roll_trend(ts_ms)
        self.last_ms = max(self.last_ms, ts_ms)
        basket = self.users.get(user)
        if basket is None or basket.ts_ms != ts_ms:
            # A new basket; an event older than the open one also starts one (event time may step back).
            prev = basket
            basket = UserBaskets(ts_ms, [])
            if prev is not None:
                basket.prev_ts_ms, basket.prev_items = prev.ts_ms, prev.items
            self.users[user] = basket
        self.dirty.users.add(user)
        if item in basket.items:
            return  # an item twice in a basket is one basket, one co-visit
        w = self.params.weight(ts_ms)
        for other in basket.items:
            self._covisit(item, other, w)
        near = self.params.next_basket_days * DAY_MS
        if basket.prev_ts_ms is not None and 0 <= ts_ms - basket.prev_ts_ms <= near:
            for other in basket.prev_items:
                if other != item:
                    self._covisit(item, other, 0.5 * w)
        basket.items.append(item)
        self._count(user, item, ts_ms)

    def _covisit(self, a: str, b: str, w: float) -> None:
        for x, y in ((a, b), (b, a)):
            nb = self.neighbours.setdefault(x, {})
            nb[y] = nb.get(y, 0.0) + w
            if len(nb) > self.params.keep * _TRIM_SLACK:
                self.neighbours[x] = dict(top_weighted(nb, self.params.keep))
            self.dirty.neighbours.add(x)

    def _count(self, user: str, item: str, ts_ms: int) -> None:
        c = self.counts.get(item)
        if c is None:
            c = self.counts[item] = ItemCounts(first_ms=ts_ms)
        c.baskets += 1
        c.first_ms = min(c.first_ms, ts_ms)
        day = ts_ms // DAY_MS
        c.days[day] = c.days.get(day, 0) + 1
        if len(c.days) > self.params.window_days:
            newest = max(c.days)
            c.days = {d: n for d, n in c.days.items() if d > newest - self.params.window_days}
        member = f"{user}\x1f{item}"
        if member not in self.bought:
            self.bought.add(member)
            self.dirty.bought.append(member)
            c.buyers += 1
        self.dirty.counts.add(item)

    def _roll_trend(self, ts_ms: int) -> None:
        """On the first event of a later day: trending over the complete days before it.

        Day granularity keeps it cheap (one scan of the share's items a day) and independent of how
        events are batched, so a replay computes exactly what the stream did."""
        day = ts_ms // DAY_MS
        if day <= self.trend_day:
            return
        self.trend_day = day
        window = self.params.trending_days
        recent = {
            item: n
            for item, c in self.counts.items()
            if (n := sum(k for d, k in c.days.items() if day - window <= d < day))
        }
        self.trend = sorted(recent.items(), key=lambda kv: (-kv[1], kv[0]))[: self.params.trending * _TRIM_SLACK]
        self.dirty.trend = True

    def top(self, item: str) -> list[tuple[str, float]]:
        """The item's `share_top` heaviest neighbours in this share: what every reader merges, so the
        scorer reads a few dozen entries per share instead of the whole map."""
        return top_weighted(self.neighbours.get(item, {}), self.params.share_top)

    def take_dirty(self) -> Dirty:
        dirty, self.dirty = self.dirty, Dirty()
        return dirty


def top_weighted(weights: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The `n` heaviest entries, heaviest first, ties by id: the one order every reader uses."""
    # Two stable sorts with C-level keys (ids, then weights descending; ties keep the id order): four
    # times faster than a heap with a Python key, and the job computes this for every item it writes.
    ids = sorted(weights)
    ids.sort(key=weights.__getitem__, reverse=True)
    return [(k, weights[k]) for k in ids[:n]]


def dump_neighbours(nb: Mapping[str, float]) -> str:
    """Ids joined by ',' (item ids never hold one), then ';' and the weights as the hex of their
    little-endian doubles: exact, so a share read back equals the share written, and a C loop each way
    (a repr and a float() per entry took most of the tables job's time)."""
    return ",".join(nb) + ";" + struct.pack(f"<{len(nb)}d", *nb.values()).hex()


def parse_neighbours(raw: str) -> dict[str, float]:
    names, sep, packed = raw.rpartition(";")
    if not sep:
        raise ValueError("a neighbour list is ids;hex-weights, and this has no ';'")
    keys = names.split(",") if names else []
    data = bytes.fromhex(packed)
    if len(data) != 8 * len(keys):
        raise ValueError(f"{len(keys)} ids but {len(data)} bytes of weights")
    return dict(zip(keys, struct.unpack(f"<{len(keys)}d", data), strict=True))


def dump_trend(trend: Sequence[tuple[str, int]], day: int) -> str:
    return f"{day};" + ",".join(f"{k}:{n}" for k, n in trend)


def parse_trend(raw: str) -> tuple[int, list[tuple[str, int]]]:
    day, _, rest = raw.partition(";")
    pairs = [p.rpartition(":") for p in rest.split(",") if p]
    return int(day), [(k, int(n)) for k, _, n in pairs]


def merge_neighbours(shares: Iterable[Mapping[str, float] | None], n: int) -> list[str]:
    """An item's neighbours over all shares: weights summed, the `n` heaviest first, ties by id."""
    present = [nb for nb in shares if nb]
    if not present:
        return []
    # The first share copied rather than added to zero: the same sums (0.0 + w == w), one loop fewer;
    # a hot item's neighbours are often in one share only.
    total = dict(present[0])
    for nb in present[1:]:
        for k, w in nb.items():
            total[k] = total.get(k, 0.0) + w
    return [k for k, _ in top_weighted(total, n)]


def merge_counts(shares: Iterable[ItemCounts | None]) -> ItemCounts:
    out = ItemCounts()
    for c in shares:
        if c is None or not c.baskets:
            continue
        out.first_ms = c.first_ms if not out.baskets else min(out.first_ms, c.first_ms)
        out.baskets += c.baskets
        out.buyers += c.buyers  # a user is in one share only, so buyers add up exactly
        for d, k in c.days.items():
            out.days[d] = out.days.get(d, 0) + k
    return out


def merge_trending(shares: Iterable[Sequence[tuple[str, int]]], n: int) -> list[str]:
    total: dict[str, float] = {}
    for trend in shares:
        for k, c in trend:
            total[k] = total.get(k, 0) + c
    return [k for k, _ in top_weighted(total, n)]


def partition_of(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner puts a record keyed by `user_id` on."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def event_ms(event: ClickEvent) -> int:
    """An event's time in epoch milliseconds: the clock every table reads by."""
    # Integer arithmetic: a float timestamp times 1000 can land a hair below the millisecond.
    return (event.ts - _EPOCH) // _MS
