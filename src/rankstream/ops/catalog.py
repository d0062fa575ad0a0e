"""`rankstream catalog add/remove/reembed/encoders`: items from a file onto the catalog topic; the title
vectors `load` seeds; the encoder swap (ops/encoders.py).

A file row is validated by the topic's own contract (`parse_catalog`) before it is sent, so what the
catalog job would dead-letter is reported here with its line number instead, and never sent.
"""

import asyncio
import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaProducer

from rankstream.deploy.kafka_local import create_topics
from rankstream.ops.encoders import encoders_status, install, reembed
from rankstream.stream.catalog import CatalogItem, Removal, parse_catalog
from rankstream.stream.catalogjob import load_encoder, run_catalog
from rankstream.stream.catalogstore import change_entry_of, log_reload, pack, seed_vectors, seen_by
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import Rejected
from rankstream.stream.redis_client import RedisClient, connect_from_settings
from rankstream.stream.settings import Settings

log = logging.getLogger(__name__)

CATALOG_PARTITIONS = 4
# The catalog topic keeps each item's latest record and a tombstone removes the item, so compaction keeps
# it the size of the catalog, not of its history. The broker then refuses a record without a key. The
# catalog DLQ keeps the broker's default (delete): its records are evidence, not state.
CATALOG_TOPIC_CONFIG = {"cleanup.policy": "compact"}
_PLACEHOLDER_KEY = b"-"  # for a row whose item_id is not text: the value's own check names the fault


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.detail}" if self.detail else f"line {self.line}: {self.reason}"


@dataclass
class Rows:
    """A catalog file, validated: the items to send and the rows refused, with their line numbers."""

    items: list[CatalogItem] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def read_catalog_file(path: Path, max_bytes: int) -> Rows:
    """Rows of a CSV (header item_id,title[,category,price]) or JSONL file (`.jsonl`/`.ndjson`, or a file
    whose first character is `{`). ConfigError for a file that cannot be read or a CSV without the header."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"catalog add: cannot read {path}: {exc}") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        return _jsonl_rows(text, max_bytes)
    return _csv_rows(text, path, max_bytes)


def _check(rows: Rows, line: int, key: bytes, value: bytes, max_bytes: int) -> None:
    try:
        item = parse_catalog(key, value, max_bytes)
    except Rejected as exc:
        rows.bad.append(BadRow(line, exc.reason, exc.detail))
        return
    assert isinstance(item, CatalogItem)  # a value was given: never a removal
    rows.items.append(item)


def _jsonl_rows(text: str, max_bytes: int) -> Rows:
    rows = Rows()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        item_id = doc.get("item_id") if isinstance(doc, dict) else None
        key = item_id.strip().encode("utf-8", "surrogatepass") if isinstance(item_id, str) else _PLACEHOLDER_KEY
        _check(rows, n, key, line.encode("utf-8", "surrogatepass"), max_bytes)
    return rows


def _csv_rows(text: str, path: Path, max_bytes: int) -> Rows:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if "item_id" not in header or "title" not in header:
        raise ConfigError(
            f"catalog add: {path} has no header item_id,title[,category,price] (found {','.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    rows = Rows()
    line = 1
    for row in reader:
        first, line = line + 1, reader.line_num
        doc: dict[str, object] = {"item_id": row.get("item_id"), "title": row.get("title")}
        if (category := (row.get("category") or "").strip()) != "":
            doc["category"] = category
        price = (row.get("price") or "").strip()
        if price:
            try:
                doc["price"] = float(price)
            except ValueError:
                rows.bad.append(BadRow(first, "invalid_price", f"{price[:40]!r} is not a number"))
                continue
            if not math.isfinite(doc["price"]):  # type: ignore[arg-type]
                rows.bad.append(BadRow(first, "invalid_price", f"{price[:40]!r} is not finite"))
                continue
        item_id = (row.get("item_id") or "").strip()
        _check(rows, first, item_id.encode(), json.dumps(doc).encode(), max_bytes)
    return rows


async def publish(settings: Settings, records: Iterable[tuple[bytes, bytes | None]]) -> int:
    """Send (key, value) records to the catalog topic (created if missing), acknowledged by all replicas."""
    await asyncio.to_thread(
        partial(
            create_topics,
            settings.kafka_bootstrap,
            {settings.catalog_topic: CATALOG_PARTITIONS, settings.catalog_dlq_topic: 1},
            topic_configs={settings.catalog_topic: CATALOG_TOPIC_CONFIG},
            **settings.kafka_client_options(),
        )
    )
    producer = AIOKafkaProducer(acks="all", **settings.kafka_client_options())
    await producer.start()
    sent = 0
    try:
        pending = [await producer.send(settings.catalog_topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*pending)
        sent = len(pending)
    finally:
        await producer.stop()
    log.info("sent %d catalog records to %s", sent, settings.catalog_topic)
    return sent


@dataclass(frozen=True)
class Applied:
    """Where a published item got to, on the writers' clocks (unix ms): its change entry (the catalog job's
    MULTI/EXEC, Redis's clock) and the last of the replicas' reports of applying it; None: not in time."""

    stored_ms: float | None
    servable_ms: float | None


async def wait_applied(
    client: RedisClient, item_id: str, after: str, replicas: Sequence[str], limit_s: float, poll_s: float = 0.02
) -> Applied:
    """Poll until every one of `replicas` reports applying the first change entry of `item_id` after entry
    `after` (`catalogstore.newest_change` before publishing), or `limit_s`."""
    entry = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if entry is None:
            entry = await change_entry_of(client, item_id, after)
        if entry is not None:
            seen = await seen_by(client, replicas)
            if seen is not None and all(last >= entry for last, _ in seen.values()):
                return Applied(entry[0], max(entry[0], *(at for _, at in seen.values())))
        await asyncio.sleep(poll_s)
    return Applied(None if entry is None else entry[0], None)


async def add_items(settings: Settings, path: Path) -> tuple[int, list[BadRow]]:
    """Publish every valid row of a catalog file; returns how many were sent and the rows refused."""
    rows = read_catalog_file(path, settings.max_event_bytes)
    sent = await publish(settings, ((item.key(), item.to_bytes()) for item in rows.items)) if rows.items else 0
    return sent, rows.bad


async def remove_items(settings: Settings, item_ids: Sequence[str]) -> tuple[int, list[str]]:
    """Publish a tombstone per valid item id; returns how many were sent and the ids refused (with why)."""
    keys: list[bytes] = []
    bad: list[str] = []
    for item_id in item_ids:
        try:
            removal = parse_catalog(item_id.encode("utf-8", "surrogatepass"), None, settings.max_event_bytes)
        except Rejected as exc:
            bad.append(f"{item_id!r}: {exc}")
            continue
        assert isinstance(removal, Removal)
        keys.append(removal.item_id.encode())
    sent = await publish(settings, ((k, None) for k in keys)) if keys else 0
    return sent, bad


@dataclass(frozen=True)
class TitleVectors:
    """Every catalog item's title vector from one encoder version, packed as stored."""

    version: str
    dim: int
    vectors: dict[str, bytes]


async def embed_catalog(settings: Settings, catalog: dict[str, str]) -> TitleVectors | None:
    """Every title through RANKSTREAM_ENCODER_DIR's encoder (None when it is unset); ConfigError if refused."""
    if settings.encoder_dir is None:
        return None
    encoder = load_encoder(settings)
    items = list(catalog)
    matrix = await asyncio.to_thread(encoder.encode, [catalog[it] for it in items])
    return TitleVectors(encoder.version, encoder.dim, {it: pack(row) for it, row in zip(items, matrix, strict=True)})


async def write_title_vectors(client: RedisClient, vectors: TitleVectors | None) -> str:
    """After `load` replaced the catalog: its vectors (if any), and a `reload` for catalog followers."""
    if vectors is None:
        await log_reload(client)
        return "no title vectors (RANKSTREAM_ENCODER_DIR is not set)"
    await seed_vectors(client, vectors.version, vectors.dim, vectors.vectors)
    return f"{len(vectors.vectors)} title vectors of encoder {vectors.version}"


async def _encoders_command(action: str, settings: Settings, artifact: Path | None) -> str:
    client = connect_from_settings(settings)
    try:
        if action == "encoders":
            return await encoders_status(client)
        assert artifact is not None
        done = await reembed(client, install(settings, artifact))
        return (
            f"encoder {done.version} active (was {done.previous or 'none'}): {done.embedded} titles embedded, "
            f"{done.passes} catch-up passes, {done.seconds:.1f} s"
        )
    finally:
        await client.aclose()


def catalog_command(action: str, settings: Settings, *, file: Path | None, items: Sequence[str]) -> tuple[str, int]:
    """`rankstream catalog serve|add|remove|reembed|encoders`: what to print, and the exit status (1 if any
    row was refused)."""
    if action == "serve":
        asyncio.run(run_catalog(settings))
        return "catalog job stopped", 0
    if action in ("reembed", "encoders"):
        return asyncio.run(_encoders_command(action, settings, file)), 0
    if action == "add":
        if file is None:
            raise ConfigError("catalog add needs a FILE (CSV with header item_id,title[,category,price], or JSONL)")
        sent, bad = asyncio.run(add_items(settings, file))
        lines = [f"refused {b}" for b in bad] + [f"sent {sent} items to {settings.catalog_topic}, refused {len(bad)}"]
        return "\n".join(lines), 1 if bad else 0
    sent, refused = asyncio.run(remove_items(settings, items))
    lines = [f"refused {r}" for r in refused] + [f"sent {sent} removals to {settings.catalog_topic}"]
    return "\n".join(lines), 1 if refused else 0
