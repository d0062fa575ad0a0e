"""Canary arithmetic, no I/O: which users a canary serves, per-version counters, and the verdict.

Per version, the scorer adds to the live-quality hash (`rs:quality`, stream/store.py) the events checked
against that version's lists and their hits (hit-rate), the events whose lists it wrote and how long
each took from the event's Kafka time (a histogram in `LATENCY_BOUNDS_MS` buckets: a p99 from counters
that any number of replicas can add to), and the events it failed to score (error rate). A canary
compares the two arms' counters since it started.

The test on hit-rate is a one-sided z-test of the difference of the two arms' hit-rates, with each
arm's variance taken over users (a cluster-robust, delta-method variance of a ratio estimator): a user's
events are not independent draws (a basket's lines are checked against one list, and some users rebuy
what they were shown much more than others), and a test that counted events as independent rolled an
identical model back (z = -1.85 on ~2,000 events per arm). The replicas keep, per user and version
during a canary, the running number of checked events n and hits h, and add to the quality hash the
growth of the per-user sums (users, sum n, sum h, sum n^2, sum h^2, sum h*n: `UserTotals`). The canary
is rolled back when it is worse with z <= -Z_FINAL at the final look, once both arms have `min_events`
checked events, and at any earlier look (from a quarter of that) only when z <= -Z_INTERIM; no look
before both arms have `MIN_USERS` users. A very strict interim bound
with the nominal one at the end is the Haybittle-Peto rule: the repeated looks leave the overall false
rollback rate close to the nominal 5%. The canary is promoted at the final look unless a test says it is
worse (on hit-rate, p99 latency or errors): a canary is a guard against regressions, not a proof that
the new version is better (`models list` shows both arms' figures for that).
"""

import hashlib
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# Histogram buckets of event -> list latency, ms: 1.25x apart from 5 ms to about 70 s, so a p99 read from
# them is within 25% of the true one.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(5 * 1.25**i, 1) for i in range(44))
Z_FINAL = 1.645  # one-sided 5%
Z_INTERIM = 3.29  # Haybittle-Peto interim bound (two-sided p = 0.001)
MIN_ERRORS = 5  # fewer canary errors than this never decide alone (one bad record is not a bad model)
MIN_USERS = 20  # per arm, before the final look: a variance over fewer users is not worth testing with


def in_share(user_id: str, share: float, salt: str) -> bool:
    """Whether `user_id` falls in a `share` of users; stable for one salt, so a user sees one version."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def latency_bucket(ms: float) -> int:
    """Index of the first bound >= `ms`; len(LATENCY_BOUNDS_MS) for the overflow bucket."""
    lo, hi = 0, len(LATENCY_BOUNDS_MS)
    while lo < hi:
        mid = (lo + hi) // 2
        if LATENCY_BOUNDS_MS[mid] < ms:
            lo = mid + 1
        else:
            hi = mid
    return lo


def group_counters(raw: Mapping[str, int | str]) -> dict[str, dict[str, int]]:
    """The live-quality hash (`version:field` -> count) by version, then field."""
    out: dict[str, dict[str, int]] = {}
    for name, value in raw.items():
        version, _, kind = name.rpartition(":")
        out.setdefault(version, {})[kind] = int(value)
    return out


def latency_fields(version: str, latencies_ms: list[float]) -> dict[str, int]:
    """Counter increments for a version's written events: `served` and one histogram bucket each."""
    out: dict[str, int] = {}
    if latencies_ms:
        out[f"{version}:served"] = len(latencies_ms)
    for ms in latencies_ms:
        key = f"{version}:lat{latency_bucket(ms)}"
        out[key] = out.get(key, 0) + 1
    return out


@dataclass(frozen=True)
class Clusters:
    """Per-user sums of one version's checked events during one canary (n events, h hits per user)."""

    users: int = 0
    n: int = 0
    h: int = 0
    nn: int = 0
    hh: int = 0
    hn: int = 0

    @classmethod
    def from_fields(cls, fields: Mapping[str, int]) -> "Clusters":
        return cls(*(int(fields.get(k, 0)) for k in ("users", "n", "h", "nn", "hh", "hn")))

    def rate_and_variance(self) -> tuple[float, float] | None:
        """Hit-rate and its variance over users; None with fewer than two users or no events."""
        if self.users < 2 or self.n <= 0:
            return None
        p = self.h / self.n
        spread = max(self.hh - 2 * p * self.hn + p * p * self.nn, 0.0)
        return p, spread / self.n**2 * self.users / (self.users - 1)


class UserTotals:
    """Per user and version, the checked events and hits since a canary started (its `tag`), in memory;
    `add` returns the growth of the per-user sums (`Clusters`) as quality-hash increments. A user's events
    go to one partition, so one replica holds their totals; a user forgotten (beyond `max_users`) or moved
    by a rebalance counts again as a new user, which only makes the variance slightly smaller."""

    def __init__(self, max_users: int = 500_000) -> None:
        self.tag: str | None = None
        self.max_users = max_users
        self._totals: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def add(self, tag: str, version: str, user: str, n: int, h: int) -> Counter[str]:
        if tag != self.tag:
            self.tag = tag
            self._totals.clear()
        if n <= 0:
            return Counter()
        new = (version, user) not in self._totals
        n0, h0 = self._totals.pop((version, user), (0, 0))
        n1, h1 = n0 + n, h0 + h
        self._totals[(version, user)] = (n1, h1)
        if len(self._totals) > self.max_users:
            self._totals.popitem(last=False)
        prefix = f"{version}@{tag}"
        out = Counter(
            {
                f"{prefix}:n": n,
                f"{prefix}:h": h,
                f"{prefix}:nn": n1 * n1 - n0 * n0,
                f"{prefix}:hh": h1 * h1 - h0 * h0,
                f"{prefix}:hn": h1 * n1 - h0 * n0,
            }
        )
        if new:
            out[f"{prefix}:users"] = 1
        return out


@dataclass(frozen=True)
class ArmCounts:
    """One version's counters (or their growth since a canary started)."""

    events: int = 0  # checked against this version's lists
    hits: int = 0
    served: int = 0  # events whose lists this version wrote
    errors: int = 0  # events this version failed to score (dead-lettered)
    latency: tuple[int, ...] = ()  # histogram, len(LATENCY_BOUNDS_MS) + 1 buckets
    clusters: Clusters = field(default_factory=Clusters)  # per-user sums during the canary

    def with_clusters(self, clusters: Clusters) -> "ArmCounts":
        return replace(self, clusters=clusters)

    @classmethod
    def from_fields(cls, fields: Mapping[str, int]) -> "ArmCounts":
        """From one version's fields of the quality hash (`events`, `hits`, `served`, `errors`, `lat<i>`)."""
        hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        for name, value in fields.items():
            if name.startswith("lat") and name[3:].isdigit() and int(name[3:]) < len(hist):
                hist[int(name[3:])] += int(value)
        return cls(
            int(fields.get("events", 0)),
            int(fields.get("hits", 0)),
            int(fields.get("served", 0)),
            int(fields.get("errors", 0)),
            tuple(hist),
        )

    def minus(self, before: "ArmCounts") -> "ArmCounts":
        hist = self.latency or (0,) * (len(LATENCY_BOUNDS_MS) + 1)
        old = before.latency or (0,) * len(hist)
        return ArmCounts(
            self.events - before.events,
            self.hits - before.hits,
            self.served - before.served,
            self.errors - before.errors,
            tuple(a - b for a, b in zip(hist, old, strict=True)),
        )

    @property
    def hit_rate(self) -> float:
        return self.hits / self.events if self.events else 0.0

    @property
    def error_rate(self) -> float:
        attempts = self.served + self.errors
        return self.errors / attempts if attempts else 0.0

    def p99_ms(self) -> float | None:
        """The upper bound of the bucket holding the 99th percentile (inf past the last bound)."""
        total = sum(self.latency)
        if not total:
            return None
        need, seen = math.ceil(0.99 * total), 0
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= need:
                return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else math.inf
        return math.inf

    def summary(self) -> dict[str, float | int | None]:
        return {
            "events": self.events,
            "hits": self.hits,
            "users": self.clusters.users,
            "hit_rate": round(self.hit_rate, 5),
            "served": self.served,
            "p99_ms": self.p99_ms(),
            "error_rate": round(self.error_rate, 5),
        }


@dataclass(frozen=True)
class Policy:
    min_events: int = 2000  # checked events per arm before the final look
    max_p99_ratio: float = 1.5  # canary p99 over the active one's beyond which it is rolled back
    p99_slack: float = 50.0  # ms: ... and only if it is also this much slower (small p99s are noisy)
    max_error_excess: float = 0.01  # canary error rate over the active one's beyond which it is rolled back


@dataclass(frozen=True)
class Verdict:
    action: str  # "wait" | "promote" | "rollback"
    reason: str
    z: float | None
    active: ArmCounts
    canary: ArmCounts

    def detail(self) -> dict[str, object]:
        """The figures behind the decision, as the activation log keeps them."""
        return {
            "reason": self.reason,
            "z": None if self.z is None else round(self.z, 3),
            "active": self.active.summary(),
            "canary": self.canary.summary(),
        }


def z_score(a: ArmCounts, c: ArmCounts) -> float | None:
    """z of the canary's hit-rate minus the active one's: over users when both arms carry per-user sums,
    else (counts alone) the pooled two-proportion form; None if undefined."""
    both = a.clusters.rate_and_variance(), c.clusters.rate_and_variance()
    if both[0] is not None and both[1] is not None:
        (pa, va), (pc, vc) = both
        return None if va + vc <= 0 else (pc - pa) / math.sqrt(va + vc)
    if not a.events or not c.events:
        return None
    pooled = (a.hits + c.hits) / (a.events + c.events)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.events + 1 / c.events))
    if se == 0:
        return None
    return (c.hit_rate - a.hit_rate) / se


def decide(active: ArmCounts, canary: ArmCounts, policy: Policy) -> Verdict:
    """Promote, roll back, or wait for more events (module docstring for the rules)."""
    z = z_score(active, canary)

    def verdict(action: str, reason: str) -> Verdict:
        return Verdict(action, reason, z, active, canary)

    if canary.errors >= MIN_ERRORS and canary.error_rate > active.error_rate + policy.max_error_excess:
        return verdict("rollback", f"error rate {canary.error_rate:.3%} vs {active.error_rate:.3%}")
    looked = min(active.events, canary.events)
    users = min(active.clusters.users, canary.clusters.users)
    if 0 < users < MIN_USERS:
        return verdict("wait", f"{users} of {MIN_USERS} users per arm")
    if looked >= policy.min_events // 4 and z is not None and z <= -Z_INTERIM:
        return verdict("rollback", f"hit-rate {canary.hit_rate:.4f} vs {active.hit_rate:.4f}, z={z:.2f} (interim)")
    if looked < policy.min_events:
        return verdict("wait", f"{looked} of {policy.min_events} events per arm")
    if z is not None and z <= -Z_FINAL:
        return verdict("rollback", f"hit-rate {canary.hit_rate:.4f} vs {active.hit_rate:.4f}, z={z:.2f}")
    p99_a, p99_c = active.p99_ms(), canary.p99_ms()
    if p99_a is not None and p99_c is not None and p99_c > max(p99_a * policy.max_p99_ratio, p99_a + policy.p99_slack):
        return verdict("rollback", f"p99 {p99_c:.0f} ms vs {p99_a:.0f} ms")
    shown = "n/a" if z is None else f"{z:.2f}"
    return verdict("promote", f"not worse: hit-rate {canary.hit_rate:.4f} vs {active.hit_rate:.4f}, z={shown}")
