"""What a consumer's fetch options cost in CPU: one stream of test events read by a bare aiokafka
consumer, once per option set, on the local stack.

    python -m rankstream.bench.fetch [--rate 1000] [--events 15000] [--wait 0 10 50]

For each `--wait` (ms; 0 = Kafka's defaults, a fetch returns with the first byte): the consumer's CPU
seconds while it reads the stream, the polls that returned records, and each record's age when polled
(p50 / p99). A wait > 0 sets the options the tables job sets (`stream.tablesjob.fetch_options`):
`fetch_max_wait_ms` to it and `fetch_min_bytes` to 1 MiB. Prints one JSON object per option set.
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from rankstream.bench.latency import percentile
from rankstream.bench.stream import produce_elsewhere
from rankstream.deploy import stack
from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.load import split_events
from rankstream.stream.events import ClickEvent
from rankstream.stream.tablesjob import fetch_options

_SETTLE_S = 3.0


async def read_once(bootstrap: str, wait_ms: int, events: list[ClickEvent], rate: float) -> dict[str, object]:
    topic = f"bench-fetch-{wait_ms}-{time.time_ns()}"
    create_topics(bootstrap, {topic: 4})
    options = fetch_options(wait_ms)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest", **options
    )
    await consumer.start()
    try:
        await asyncio.sleep(_SETTLE_S)  # joined and assigned before the first record
        producing = asyncio.create_task(produce_elsewhere(bootstrap, topic, events, rate))
        cpu0 = time.process_time()
        got, polls, ages = 0, 0, []
        deadline = time.time() + len(events) / rate + 30
        while got < len(events) and time.time() < deadline:
            fetched = await consumer.getmany(timeout_ms=100, max_records=500)
            now_ms = time.time() * 1000
            polls += bool(fetched)
            for records in fetched.values():
                got += len(records)
                ages += [now_ms - r.timestamp for r in records]
        cpu = time.process_time() - cpu0
        await producing
    finally:
        await consumer.stop()
    return {
        "fetch_wait_ms": wait_ms,
        "events": got,
        "consumer_cpu_s": round(cpu, 2),
        "polls_with_records": polls,
        "age_ms": {"p50": percentile(ages, 50), "p99": percentile(ages, 99)},
    }


async def compare(bootstrap: str, waits: list[int], events: list[ClickEvent], rate: float) -> None:
    for wait_ms in waits:
        print(json.dumps(await read_once(bootstrap, wait_ms, events, rate)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--events", type=int, default=15_000, help="the first N test events")
    parser.add_argument("--wait", type=int, nargs="+", default=[0, 10, 50], help="fetch waits to compare, ms")
    args = parser.parse_args()
    home = Path(os.environ.get("RANKSTREAM_HOME", "var")).resolve()
    info = stack.up(home / "stack")
    asyncio.run(compare(info.bootstrap, args.wait, split_events(home / "data", "test", args.events), args.rate))


if __name__ == "__main__":  # the producer runs in a spawned process, which imports this module again
    main()
