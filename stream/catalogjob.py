"""`rankstream catalog serve`: new and changed items reach Redis, titles embedded, within a batch.

Its own consumer group (`catalog_group_id`) on the catalog topic, any number of replicas (an item's
records share a partition, keyed by its id). Per fetched batch: parse every record (bad ones go to the
catalog DLQ with their reason), keep each item's last record, read what Redis holds for those items, embed
the titles that are new or changed (or lack this encoder's vector), write titles, vectors, removals and
their change entries in one MULTI/EXEC (stream/catalogstore.py), confirm the dead letters, then commit the
offsets. A failed batch is read again from its first offsets; the writes are absolute and a replay finds
them done, so nothing is lost or doubled.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from rankstream.stream import metrics as m
from rankstream.stream.catalog import CatalogItem, Removal, parse_catalog
from rankstream.stream.catalogstore import (
    ENCODER_KEY,
    Encoder,
    Encoders,
    claim_encoder,
    pack,
    read_encoders,
    read_stored,
    write_changes,
)
from rankstream.stream.deadletter import DeadLetters, Source
from rankstream.stream.encoder import TextEncoder
from rankstream.stream.errors import ArtifactError, ConfigError, RankstreamError
from rankstream.stream.events import Rejected, internal_error
from rankstream.stream.health import Probe, run_job
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient, check_redis, connect_from_settings
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)


def load_encoder(settings: Settings) -> TextEncoder:
    """The text encoder of RANKSTREAM_ENCODER_DIR; ConfigError when it is unset or the artifact is refused."""
    if settings.encoder_dir is None:
        raise ConfigError(
            "RANKSTREAM_ENCODER_DIR is not set: the catalog job embeds titles with a text encoder artifact; set it "
            "to a directory written by export_encoder"
        )
    try:
        return TextEncoder.load(Path(settings.encoder_dir), threads=settings.encoder_threads)
    except ArtifactError as exc:
        raise ConfigError(f"RANKSTREAM_ENCODER_DIR: the text encoder was refused: {exc}") from exc


def encoder_beside(settings: Settings, version: str) -> TextEncoder:
    """Encoder `version` from the folder of that name beside RANKSTREAM_ENCODER_DIR (where `catalog reembed`
    installs it); RankstreamError, saying where it looked, when it is missing or refused."""
    if settings.encoder_dir is None:
        raise ConfigError("RANKSTREAM_ENCODER_DIR is not set")
    path = Path(settings.encoder_dir).parent / version
    try:
        return TextEncoder.load(path, threads=settings.encoder_threads)
    except ArtifactError as exc:
        raise RankstreamError(
            f"encoder {version} is named in {ENCODER_KEY} but cannot be used from {path}: {exc}; install it there "
            "(`rankstream catalog reembed DIR` copies it) or make another version active"
        ) from exc


@dataclass
class Batch:
    """One fetch, parsed: each item's last valid record, the rejected records, and the offsets to commit."""

    latest: dict[str, CatalogItem | Removal] = field(default_factory=dict)
    rejected: list[tuple[Source, Rejected]] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    commit: dict[TopicPartition, int] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)  # each item's last valid record
    records: int = 0


@dataclass(frozen=True)
class Plan:
    """What a batch changes in Redis: the puts to embed and write, and the removals."""

    puts: dict[str, CatalogItem]
    removals: list[str]
    unchanged: int


class CatalogJob:
    """One replica of the catalog job. `start`, `run` until `stop`, `close`."""

    def __init__(
        self,
        settings: Settings,
        client: RedisClient,
        encoder: Encoder,
        find: Callable[[str], Encoder] | None = None,
    ) -> None:
        """`encoder`: the one configured (made active on a Redis that names none); `find`: loads any other
        version `ENCODER_KEY` names (default: none can be, and a batch waits until the key names this one)."""
        self.settings = settings
        self.client = client
        self.encoder = encoder
        self._find = find
        self._loaded: dict[str, Encoder] = {encoder.version: encoder}
        self.written = 0  # items put or removed in Redis
        self.dead_lettered = 0
        self._stop = asyncio.Event()
        self._started = False
        # The scorer's probes, same meaning (stream/health.py).
        self.probe = Probe(settings.liveness_s, ping=client.ping)
        common = settings.kafka_client_options()
        self.consumer = AIOKafkaConsumer(
            group_id=settings.catalog_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **common,
            **settings.kafka_consumer_options,
        )
        self.producer = AIOKafkaProducer(acks="all", **common)
        self.dead = DeadLetters(self.producer, settings.catalog_dlq_topic, settings.max_event_bytes)

    async def start(self) -> None:
        if self._started:
            raise RankstreamError("CatalogJob.start called twice")
        self._started = True
        await check_redis(self.client)
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.settings.catalog_topic])
        self.probe.assigned = lambda: len(self.consumer.assignment())
        self.probe.started = True
        self.probe.progressed()
        log.info(
            "catalog job started: topic=%s group=%s encoder=%s (dim %d)",
            self.settings.catalog_topic,
            self.settings.catalog_group_id,
            self.encoder.version,
            self.encoder.dim,
        )

    def stop(self) -> None:
        """Finish the batch in hand, write and commit it, then leave `run`."""
        self._stop.set()

    async def run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                fetched = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.batch_max_records)
                if fetched:
                    await self.process(fetched)
                delay = 0.0
                self.probe.failing = ""
                self.probe.progressed()
            except (*REDIS_ERRORS, KafkaError, RankstreamError) as exc:
                self.probe.failing = str(exc)
                self.probe.progressed()  # backing off is the loop turning, not a hang
                delay = min(5.0, max(0.1, delay * 2))
                m.CATALOG_ERRORS.inc()
                log.warning("catalog job: %s; the batch is read again in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def process(self, fetched: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Parse, dead-letter, embed, write, commit one fetch; on failure rewind to its first offsets and raise."""
        started = time.monotonic()
        batch = self.parse(fetched)
        try:
            for source, rejected in batch.rejected:
                await self.dead.send(source, rejected)
            state, encoders = await self.encoders()
            plan = await self.plan(batch.latest, state.versions)
            vectors = await self.embed(plan, batch, encoders)
            await write_changes(
                self.client,
                state,
                {it: (item.title, vectors[it]) for it, item in plan.puts.items() if it in vectors},
                plan.removals,
            )
            await self.dead.flush()
            await self.consumer.commit(batch.commit)
        except BaseException:
            self.dead.discard()
            for tp, offset in batch.first.items():
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, offset)
            raise
        self.written += len(plan.puts) + len(plan.removals)
        self.dead_lettered += len(batch.rejected)
        m.CATALOG_RECORDS.labels("put").inc(len(plan.puts))
        m.CATALOG_RECORDS.labels("del").inc(len(plan.removals))
        m.CATALOG_RECORDS.labels("unchanged").inc(plan.unchanged)
        for _, rejected in batch.rejected:
            m.CATALOG_DLQ.labels(rejected.reason).inc()
        log.info(
            "catalog batch: %d records, %d put, %d removed, %d unchanged, %d dead-lettered in %.3fs",
            batch.records,
            len(plan.puts),
            len(plan.removals),
            plan.unchanged,
            len(batch.rejected),
            time.monotonic() - started,
        )

    def parse(self, fetched: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> Batch:
        batch = Batch()
        for tp, records in fetched.items():
            if not records:
                continue
            batch.first[tp] = records[0].offset
            batch.commit[tp] = records[-1].offset + 1
            for rec in records:
                batch.records += 1
                source = Source(tp.topic, tp.partition, rec.offset, rec.key, rec.value)
                try:
                    parsed = parse_catalog(rec.key, rec.value, self.settings.max_event_bytes)
                except Rejected as exc:
                    batch.rejected.append((source, exc))
                    continue
                batch.latest.pop(parsed.item_id, None)  # re-insert: the dict keeps the order of last records
                batch.latest[parsed.item_id] = parsed
                batch.sources[parsed.item_id] = source
        return batch

    async def encoders(self) -> tuple[Encoders, dict[str, Encoder]]:
        """What `ENCODER_KEY` names now (this job's own encoder made active if it names none) and an encoder
        for each of those versions, loaded once; RankstreamError when one cannot be loaded."""
        state = await read_encoders(self.client)
        if state.active is None:
            await claim_encoder(self.client, self.encoder.version, self.encoder.dim)
            state = await read_encoders(self.client)
        for version in state.versions:
            if version in self._loaded:
                continue
            if self._find is None:
                raise RankstreamError(
                    f"encoder {version} is named in {ENCODER_KEY}; this job has only {self.encoder.version}"
                )
            self._loaded[version] = await asyncio.to_thread(self._find, version)
            log.info("catalog job: loaded encoder %s", version)
        for version in [v for v in self._loaded if v not in state.versions and v != self.encoder.version]:
            del self._loaded[version]  # a version no longer named: its memory back
        return state, {v: self._loaded[v] for v in state.versions}

    async def plan(self, latest: Mapping[str, CatalogItem | Removal], versions: Sequence[str]) -> Plan:
        """Compare each item's last record with what Redis holds: only real changes are written (and titles
        that lack a vector of one of `versions`)."""
        stored = await read_stored(self.client, versions, list(latest))
        puts: dict[str, CatalogItem] = {}
        removals: list[str] = []
        unchanged = 0
        for it, rec in latest.items():
            now = stored[it]
            if isinstance(rec, Removal):
                if now.title is not None or now.has_vector:
                    removals.append(it)
                else:
                    unchanged += 1
            elif now.title != rec.title or not now.has_vector:
                puts[it] = rec
            else:
                unchanged += 1
        return Plan(puts, removals, unchanged)

    async def embed(self, plan: Plan, batch: Batch, encoders: Mapping[str, Encoder]) -> dict[str, dict[str, bytes]]:
        """Each put's packed vector from every encoder (item -> version -> vector); only the items every
        encoder embedded come back."""
        out: dict[str, dict[str, bytes]] = {it: {} for it in plan.puts}
        for version, encoder in encoders.items():
            for it, vec in (await self._embed_with(encoder, plan, batch, skip=set(plan.puts) - set(out))).items():
                out[it][version] = vec
            out = {it: v for it, v in out.items() if version in v}
        return out

    async def _embed_with(self, encoder: Encoder, plan: Plan, batch: Batch, skip: set[str]) -> dict[str, bytes]:
        """Packed vectors of the puts' titles (in a worker thread: ONNX Runtime holds the CPU, not the loop).

        A batch the encoder fails on is embedded one title at a time; a title that fails alone is
        dead-lettered (`internal_error`) and its item not written. `skip`: items already dead-lettered.
        """
        items = [it for it in plan.puts if it not in skip]
        titles = [plan.puts[it].title for it in items]
        if not items:
            return {}
        try:
            matrix = await asyncio.to_thread(encoder.encode, titles)
            return {it: pack(row) for it, row in zip(items, matrix, strict=True)}
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors; find the title that fails
            log.warning("encoding %d titles failed (%s); encoding them one by one", len(items), exc)
        out: dict[str, bytes] = {}
        for it, title in zip(items, titles, strict=True):
            try:
                out[it] = pack((await asyncio.to_thread(encoder.encode, [title]))[0])
            except Exception as exc:  # noqa: BLE001 - that title's dead-letter reason
                rejected = internal_error(exc)
                await self.dead.send(batch.sources[it], rejected)
                batch.rejected.append((batch.sources[it], rejected))
        return out

    async def close(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.producer.stop()


async def run_catalog(settings: Settings) -> None:
    """Run one catalog replica until SIGTERM/SIGINT; /metrics, /healthz, /readyz on RANKSTREAM_METRICS_PORT."""
    encoder = load_encoder(settings)  # before any connection: a refused artifact stops here
    client = connect_from_settings(settings)
    job = CatalogJob(settings, client, encoder, find=partial(encoder_beside, settings))
    await run_job(job, settings.metrics_port, client.aclose)
