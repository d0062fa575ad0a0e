"""`bench reads` compares two ways of re-reading an item; the comparison means something only if both
give the same merged values, whichever shares are parsed anew."""

from rankstream.bench.reads import _reread, _values
from rankstream.data.live_replay import LiveReplay
from rankstream.stream.live import DAY_MS, ItemCounts, LiveParams, parse_neighbours

T0 = 1_300_000_000_000


def test_parsing_only_the_changed_shares_merges_to_the_same_values() -> None:
    tables = LiveReplay(LiveParams(), 3)
    users = [f"u{k}" for k in range(12)]
    for day in range(4):
        for k, user in enumerate(users):
            ts = T0 + day * DAY_MS + k
            tables.apply(user, f"i{(k + day) % 5}", ts)
            tables.apply(user, f"i{(k * 3 + day) % 7}", ts)
    raw = [_values(share, "i1") for share in tables.shares]
    assert sum(nb is not None for nb, _ in raw) >= 2  # the item lives in more than one share
    parsed = [(parse_neighbours(nb) if nb else None, ItemCounts.parse(c) if c else None) for nb, c in raw]
    n = tables.params.neighbours
    everything = _reread(raw, parsed, {0, 1, 2}, n)
    assert everything[0] and everything[1].baskets > 0
    for changed in ({0}, {1}, {2}, {0, 2}, set()):
        assert _reread(raw, parsed, changed, n) == everything
