"""`rankstream catalog reembed DIR` and `catalog encoders`: another text encoder made active, no restart.

The order that loses no item (stream/catalogstore.py says why each step holds):
1. verify the artifact and install it beside RANKSTREAM_ENCODER_DIR, where every catalog job finds it;
2. name it `next`: from their next batch on the catalog jobs write its vectors too;
3. embed every title of a snapshot, then the items of every change logged since, pass after pass,
   until a pass finds no new change;
4. make it active and log a `reload`: each scorer reads the catalog again with its vectors.
An interrupted run leaves the active version serving; running it again starts over from step 2.
"""

import asyncio
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rankstream.stream.catalogjob import encoder_beside
from rankstream.stream.catalogstore import (
    ENCODER_KEY,
    Encoder,
    activate_encoder,
    begin_encoder,
    pack,
    read_changes,
    read_encoders,
    read_snapshot,
    textvec_key,
)
from rankstream.stream.encoder import TextEncoder, read_encoder_manifest
from rankstream.stream.errors import ArtifactError, ConfigError, StoreError
from rankstream.stream.redis_client import REDIS_ERRORS, RedisClient
from rankstream.stream.settings import Settings
from rankstream.stream.store import CATALOG_KEY

log = logging.getLogger(__name__)

CHUNK = 256  # titles per embedding call and per HSET
MAX_CHANGES = 10_000  # change entries read per pass


@dataclass(frozen=True)
class Reembedded:
    """What a `catalog reembed` did."""

    version: str
    previous: str | None
    embedded: int  # titles embedded, the snapshot's and the catch-up passes'
    passes: int  # catch-up passes that found changes
    seconds: float


def install(settings: Settings, artifact: Path) -> TextEncoder:
    """Verify `artifact` and copy it beside RANKSTREAM_ENCODER_DIR under its version's name (a temporary
    folder renamed into place), unless it is there already; the encoder as the catalog jobs will load it."""
    if settings.encoder_dir is None:
        raise ConfigError("RANKSTREAM_ENCODER_DIR is not set: reembed installs the encoder beside it, set it first")
    try:
        encoder = TextEncoder.load(artifact, threads=settings.encoder_threads)
    except ArtifactError as exc:
        raise ConfigError(f"the encoder was refused, nothing changed: {exc}") from exc
    target = Path(settings.encoder_dir).parent / encoder.version
    if target.exists() and _same_files(target, encoder):
        return encoder_beside(settings, encoder.version)  # installed before (a rerun, or a rollback)
    if target.resolve() != Path(artifact).resolve():
        if target.exists():
            raise ConfigError(
                f"{target} holds other files under version {encoder.version}; "
                "remove it, or give the artifact another version"
            )
        partial = target.with_name(f".{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(artifact, partial)
        partial.rename(target)
        log.info("installed encoder %s at %s", encoder.version, target)
    return encoder_beside(settings, encoder.version)


def _same_files(folder: Path, encoder: TextEncoder) -> bool:
    try:
        return read_encoder_manifest(folder).files == encoder.manifest.files
    except ArtifactError:
        return False


async def _write_vectors(client: RedisClient, encoder: Encoder, titles: Mapping[str, str]) -> int:
    """Embed `titles` (item -> title) into `encoder`'s vectors, CHUNK at a time; how many were embedded."""
    items = list(titles)
    key = textvec_key(encoder.version)
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        matrix = await asyncio.to_thread(encoder.encode, [titles[it] for it in chunk])
        try:
            await client.hset(key, mapping={it: pack(row) for it, row in zip(chunk, matrix, strict=True)})
        except REDIS_ERRORS as exc:
            raise StoreError(f"writing {len(chunk)} vectors of encoder {encoder.version} failed: {exc}") from exc
    return len(items)


async def reembed(client: RedisClient, encoder: Encoder) -> Reembedded:
    """Steps 2-4 of the module doc for `encoder`. StoreError when Redis fails or another `reembed` or `load`
    took the encoder key over meanwhile (the active version is left as it was in both cases)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    previous = (await read_encoders(client)).active
    await begin_encoder(client, encoder.version, encoder.dim)
    snap = await read_snapshot(client, encoder.version, encoder.dim)
    embedded = await _write_vectors(client, encoder, snap.titles)
    after, passes = snap.last_id, 0
    while True:
        changes = await read_changes(client, encoder.version, after, MAX_CHANGES)
        if changes.gap:
            raise StoreError("the catalog change log was trimmed past this run's snapshot; run reembed again")
        if not changes.entries:
            break
        puts = {it: t for it, t in changes.titles.items() if t is not None}
        gone = [it for it, t in changes.titles.items() if t is None]
        embedded += await _write_vectors(client, encoder, puts)
        if gone:
            try:
                await client.hdel(textvec_key(encoder.version), *gone)
            except REDIS_ERRORS as exc:
                raise StoreError(f"removing {len(gone)} vectors of encoder {encoder.version} failed: {exc}") from exc
        after, passes = changes.entries[-1][0], passes + 1
    if (await read_encoders(client)).next != encoder.version:
        raise StoreError(f"{ENCODER_KEY} no longer names {encoder.version} next (another reembed or a load ran)")
    await activate_encoder(client, encoder.version, encoder.dim)
    seconds = loop.time() - started
    log.info(
        "encoder %s active (was %s): %d titles embedded, %d catch-up passes",
        encoder.version,
        previous,
        embedded,
        passes,
    )
    return Reembedded(encoder.version, previous, embedded, passes, round(seconds, 2))


async def encoders_status(client: RedisClient) -> str:
    """`catalog encoders`: the catalog's size, the active and next versions, and how many vectors each
    stored version holds."""
    state = await read_encoders(client)
    try:
        items = await client.hlen(CATALOG_KEY)
        counts = [await client.hlen(textvec_key(version)) for version, _ in state.dims]
    except REDIS_ERRORS as exc:
        raise StoreError(f"reading the catalog's size failed: {exc}") from exc
    lines = [f"catalog {items} items", f"active {state.active or '-'}", f"next   {state.next or '-'}"]
    lines += [
        f"  {version}: dim {dim}, {count} vectors" for (version, dim), count in zip(state.dims, counts, strict=True)
    ]
    return "\n".join(lines)
