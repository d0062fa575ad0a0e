"""The crash-loop guard: a record that keeps stopping replicas is dead-lettered, not retried forever.

Where a previous owner stopped inside a batch (kill -9, out of memory, a native crash), that batch's
range is taken one record at a time, so the record that stops replicas is found; once it has stopped
`crash_loop_limit` replicas in a row on its own it is dead-lettered as `crash_loop` and the partition
moves on. The bookkeeping is one Lua call per batch on `rs:guard:{<group>}`.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition

from rankstream.stream.errors import StoreError
from rankstream.stream.events import Rejected
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient
from rankstream.stream.store import user_fault

log = logging.getLogger(__name__)

Records = Mapping[TopicPartition, Sequence[ConsumerRecord]]

# The crash-loop guard, one step per partition of a batch (ARGV: owner, then topic:partition, first
# offset, last offset per partition). A stored batch of another owner that was never followed by a
# later one died in flight: its range is suspect and is retried one record at a time. `count` is how
# many owners in a row started a batch at the same offset; the caller dead-letters the record once it
# passes the limit. The same owner retrying its own batch (a Redis outage) counts nothing.
_GUARD_LUA = """
local out = {}
for i = 2, #ARGV, 3 do
  local field, first, last = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local s, e, owner, count, suspect = -1, -1, '', 0, -1
  local old = redis.call('HGET', KEYS[1], field)
  if old then
    local a, b, o, c, sus = string.match(old, '^(-?%d+),(-?%d+),([^,]*),(%d+),(-?%d+)$')
    if a then s, e, owner, count, suspect = tonumber(a), tonumber(b), o, tonumber(c), tonumber(sus) end
  end
  if owner ~= '' and owner ~= ARGV[1] and e > suspect then suspect = e end
  local n = 1
  if s == first then n = (owner == ARGV[1]) and count or count + 1 end
  local careful = first <= suspect
  if careful then last = first end
  redis.call('HSET', KEYS[1], field, first .. ',' .. last .. ',' .. ARGV[1] .. ',' .. n .. ',' .. suspect)
  out[#out + 1] = n
  out[#out + 1] = careful and 1 or 0
end
return out
"""


@dataclass(frozen=True)
class Attempt:
    """What the guard knows of a partition's next batch."""

    starts: int  # owners in a row that started a batch at this offset, this one included
    careful: bool  # the offset lies in a batch a previous owner never finished: take one record only


def guard_key(group_id: str) -> str:
    return f"rs:guard:{{{group_id}}}"


class Guard:
    """One scorer's side of the guard: `owner` names this process to the others of `group_id`."""

    def __init__(self, client: RedisClient, group_id: str, owner: str, limit: int) -> None:
        self._r = client
        self._script = client.register_script(_GUARD_LUA)
        self._key = guard_key(group_id)
        self._owner = owner
        self._limit = limit

    async def attempts(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, Attempt]:
        """Record that this owner starts a batch over `ranges` (topic:partition -> first, last offset) and
        say, per partition, how many owners in a row started there and whether to take one record only."""
        if not ranges:
            return {}
        args: list[str | int] = [self._owner]
        for field, (first, last) in ranges.items():
            args += [field, first, last]
        try:
            reply = await self._script(keys=[self._key], args=args)
        except REDIS_ERRORS as exc:
            if user_fault(exc):  # a stray value under the guard's key: start it over
                log.error("%s was unusable and is reset: %s", self._key, exc)
                await self._r.delete(self._key)
                return await self.attempts(ranges)
            raise StoreError(f"recording the batch in {self._key} failed: {exc}") from exc
        return {field: Attempt(int(reply[2 * i]), bool(reply[2 * i + 1])) for i, field in enumerate(ranges)}

    async def batch(
        self, records: Records
    ) -> tuple[dict[TopicPartition, Sequence[ConsumerRecord]], dict[tuple[TopicPartition, int], Rejected]]:
        """The records to process now, and the (partition, offset) of those to dead-letter unprocessed."""
        ranges = {f"{tp.topic}:{tp.partition}": (recs[0].offset, recs[-1].offset) for tp, recs in records.items()}
        attempts = await self.attempts(ranges)
        kept: dict[TopicPartition, Sequence[ConsumerRecord]] = {}
        doomed: dict[tuple[TopicPartition, int], Rejected] = {}
        for tp, recs in records.items():
            attempt = attempts[f"{tp.topic}:{tp.partition}"]
            kept[tp] = recs[:1] if attempt.careful else recs
            if attempt.starts > self._limit:
                stopped = attempt.starts - 1
                doomed[(tp, recs[0].offset)] = Rejected("crash_loop", f"{stopped} replicas stopped processing it")
        return kept, doomed
