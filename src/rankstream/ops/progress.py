"""How far the scorer has got with a replay: records its group committed, counted from a start.

`size - lag` (the topic's records minus the group's lag) is how far the group has committed into the
topic. It grows only as the scorer commits, however many records a replay in flight appends meanwhile,
so the demo's bar moves while scoring goes on, not only once the replay is sent.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from rankstream.stream.lag import group_lag, topic_size
from rankstream.stream.settings import Settings

Reading = tuple[int, int]  # (records committed into the topic, lag), both summed over partitions


def scored(start: int, committed: int, total: int) -> int:
    """Records committed since the group stood at `start`, clamped to 0..total."""
    return min(total, max(0, committed - start))


async def read_committed(settings: Settings) -> Reading:
    """(how far the scorer group has committed into the clicks topic, its lag) from the brokers."""
    size = await topic_size(settings.kafka_bootstrap, settings.topic)
    lag = sum((await group_lag(settings.kafka_bootstrap, settings.topic, settings.group_id)).values())
    return size - lag, lag


async def follow(
    read: Callable[[], Awaitable[Reading]],
    sending: asyncio.Future[int],
    *,
    start: int,
    total: int,
    poll_s: float = 1.0,
) -> AsyncIterator[Reading]:
    """Yield (records scored so far, lag) every `poll_s` until `sending` is done and the lag is 0.

    The count never goes back and ends at `total` (the backlog at `start` plus the records sent).
    """
    done = 0
    while True:
        # Read before the lag: a lag of 0 ends the count only once every record was sent.
        all_sent = sending.done()
        committed, lag = await read()
        if all_sent and lag == 0:
            yield total, 0
            return
        done = max(done, scored(start, committed, total))
        yield done, lag
        await asyncio.sleep(poll_s)
