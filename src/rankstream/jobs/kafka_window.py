"""Reading a recompression window from the clicks topic: every valid event from the first record at or after
the window start up to the end offsets at the time of the read."""

import logging
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from rankstream.stream.errors import ConfigError, RankstreamError
from rankstream.stream.events import ClickEvent, Rejected, parse_event
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)


async def read_kafka_window(settings: Settings, start: datetime) -> tuple[list[ClickEvent], int]:
    """Valid events on the clicks topic from the first record at or after `start` up to the end offsets
    at the time of the call; (events, records skipped as invalid, which the scorers dead-letter)."""
    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **options)
    events: list[ClickEvent] = []
    invalid = 0
    try:
        await admin.start()
        await consumer.start()
        (described,) = await admin.describe_topics([settings.topic])
        tps = [TopicPartition(settings.topic, p["partition"]) for p in described["partitions"]]
        if not tps:
            raise ConfigError(f"topic {settings.topic} has no partitions on {settings.kafka_bootstrap}")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            first = found[tp].offset if found.get(tp) is not None else ends[tp]
            if first < ends[tp]:
                consumer.seek(tp, first)
                todo[tp] = ends[tp]
        log.info("reading %s from %s: %d partitions to read", settings.topic, start.isoformat(), len(todo))
        now = datetime.now(UTC)
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= todo.get(tp, -1):
                        continue  # arrived after the read began: the next cycle's
                    try:
                        events.append(parse_event(record.value, settings.max_event_bytes, now))
                    except Rejected:
                        invalid += 1
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    except KafkaError as exc:
        raise RankstreamError(
            f"reading {settings.topic} from {settings.kafka_bootstrap} failed: {exc}; check that Kafka is up and "
            "RANKSTREAM_KAFKA_BOOTSTRAP names it"
        ) from exc
    finally:
        await consumer.stop()
        await admin.close()
    log.info("read %d events from %s (%d invalid skipped)", len(events), settings.topic, invalid)
    return events, invalid
