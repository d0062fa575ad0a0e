"""The kill run's comparison must see a single event's difference, or its 'equal' would prove nothing."""

import copy

from rankstream.bench.tables import compare
from rankstream.data.live_replay import LiveReplay
from rankstream.stream.live import LiveParams

T0 = 1_300_000_000_000


def test_compare_sees_one_event_more_and_nothing_when_equal() -> None:
    a = LiveReplay(LiveParams(), 2)
    a.apply_all([("u", "x", T0), ("u", "y", T0), ("v", "x", T0 + 1)])
    b = copy.deepcopy(a)
    assert compare(a.shares, b.shares) == []
    b.apply("v", "z", T0 + 1)
    assert compare(a.shares, b.shares)
    c = copy.deepcopy(a)
    c.apply("w", "y", T0 + 86_400_000 * 2)  # a new day: trend, counts, users, bought all move
    assert len(compare(a.shares, c.shares, limit=20)) >= 4
