"""Another text encoder made active on the real Kafka and Redis, no restart: `catalog reembed` installs and
fills it in, a catalog job running meanwhile writes both versions' vectors, a write of a job that missed
the change is refused, a title changed while the snapshot was embedded is embedded again, and a follower
(as each scorer holds one) swaps its index at the activation's `reload`."""

import asyncio
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import redis

from rankstream.compression.encoder_export import REFERENCE_TITLES, export_encoder
from rankstream.compression.tiny import tiny_encoder
from rankstream.deploy import stack as local_stack
from rankstream.ops.catalog import add_items, embed_catalog, write_title_vectors
from rankstream.ops.encoders import encoders_status, install, reembed
from rankstream.stream.catalogjob import CatalogJob, encoder_beside
from rankstream.stream.catalogstore import (
    EncoderChanged,
    Encoders,
    begin_encoder,
    pack,
    read_encoders,
    read_snapshot,
    unpack,
    write_changes,
)
from rankstream.stream.encoder import TextEncoder
from rankstream.stream.redis_client import connect
from rankstream.stream.settings import Settings
from rankstream.stream.store import CATALOG_KEY, Store
from rankstream.stream.textindex import CatalogFollower

from .conftest import CATALOG, ITEMS, catalog_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OLD, NEW = "e-tiny", "e-tiny-b"


@pytest.fixture(scope="module")
def new_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny bi-encoder (other weights, so other vectors), exported away from the encoders folder."""
    root = tmp_path_factory.mktemp("encoder-b")
    hf = tiny_encoder(root / "hf", seed=1)
    return export_encoder(hf, root / NEW, quantize="none", reference_titles=REFERENCE_TITLES, version=NEW)


@pytest.fixture
def settings(stack: local_stack.StackInfo, encoder_dir: Path, tmp_path: Path) -> Settings:
    """The old encoder in a folder of its own, as a deployment's encoders volume holds it."""
    shutil.copytree(encoder_dir, tmp_path / "encoders" / OLD)
    return catalog_settings(stack, tmp_path / "encoders" / OLD)


def assert_vectors(snap_vectors: dict[str, bytes], titles: dict[str, str], encoder: TextEncoder) -> None:
    assert set(snap_vectors) >= set(titles)
    want = encoder.encode([titles[it] for it in titles])
    got = np.stack([unpack(snap_vectors[it], encoder.dim) for it in titles])
    np.testing.assert_allclose(got, want, atol=1e-5)


async def test_a_job_writes_both_versions_while_one_is_filled_in_and_a_stale_write_is_refused(
    store: Store, settings: Settings, new_encoder: Path, tmp_path: Path
) -> None:
    client = store.client
    await write_title_vectors(client, await embed_catalog(settings, CATALOG))
    old = TextEncoder.load(settings.encoder_dir)
    new = install(settings, new_encoder)
    assert (settings.encoder_dir.parent / NEW / "manifest.json").exists()
    assert install(settings, new_encoder).version == NEW  # installed already: reused, not refused
    await begin_encoder(client, NEW, new.dim)

    # A write prepared before `next` was set (a job that read the key earlier) is refused whole.
    with pytest.raises(EncoderChanged):
        await write_changes(client, Encoders(OLD), {"Z1": ("stale title", {OLD: pack(old.encode(["x"])[0])})}, [])
    assert not await client.hexists(CATALOG_KEY, "Z1")

    items = {f"J{i:02d}": f"{c} swapped thing {i}" for i, c in enumerate(["teal", "plum"] * 5)}
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"item_id": k, "title": t}) + "\n" for k, t in items.items()))
    assert await add_items(settings, path) == (len(items), [])
    job = CatalogJob(settings, connect(settings.redis_url), old, find=partial(encoder_beside, settings))
    await job.start()
    task = asyncio.create_task(job.run())
    try:
        await wait_for(lambda: client.hexists(CATALOG_KEY, "J09"), 60)
    finally:
        job.stop()
        await task
        await job.close()
        await job.client.aclose()
    assert_vectors((await read_snapshot(client, OLD)).vectors, items, old)
    assert_vectors((await read_snapshot(client, NEW)).vectors, items, new)


async def test_reembed_fills_in_the_new_version_catches_up_and_every_follower_swaps(
    store: Store, settings: Settings, new_encoder: Path
) -> None:
    client = store.client
    await write_title_vectors(client, await embed_catalog(settings, CATALOG))
    old = TextEncoder.load(settings.encoder_dir)
    follower = CatalogFollower(client, OLD, old.dim, follow=True)
    await follower.load()
    assert follower.version == OLD and len(follower.index) == len(CATALOG)
    pinned = CatalogFollower(client, OLD, follower.dim)  # not following: stays on its version
    await pinned.load()

    new = install(settings, new_encoder)
    changed = ITEMS[4]

    class ChangedMidway:
        """The new encoder, but while the snapshot is embedded a catalog job changes a title: the snapshot
        pass writes the old title's vector, and only the catch-up can put it right."""

        version, dim = new.version, new.dim
        calls = 0

        def encode(self, titles: list[str]) -> np.ndarray:
            self.calls += 1
            if self.calls == 1:
                sync = redis.Redis.from_url(settings.redis_url)
                sync.hset(CATALOG_KEY, changed, "a title changed midway")
                sync.xadd("{rs:catalog}:changes", {"item": changed, "op": "put"})
                sync.close()
            return new.encode(titles)

    done = await reembed(client, ChangedMidway())
    assert done.version == NEW and done.previous == OLD and done.passes == 1
    assert done.embedded == len(CATALOG) + 1
    state = await read_encoders(client)
    assert state.active == NEW and state.next is None and state.dim(NEW) == new.dim

    titles = await client.hgetall(CATALOG_KEY)
    assert titles[changed] == "a title changed midway"
    assert_vectors((await read_snapshot(client, NEW)).vectors, titles, new)

    assert await follower.refresh() >= 1
    assert follower.version == NEW and follower.dim == new.dim
    assert set(follower.index.ids) == set(titles)
    np.testing.assert_allclose(follower.index.vector(changed), new.encode([titles[changed]])[0], atol=1e-5)
    await pinned.refresh()
    assert pinned.version == OLD

    status = await encoders_status(client)
    assert f"catalog {len(titles)} items" in status and f"active {NEW}" in status
    assert f"{NEW}: dim {new.dim}, {len(titles)} vectors" in status


def test_install_refuses_a_broken_artifact_and_changes_nothing(
    settings: Settings, new_encoder: Path, tmp_path: Path
) -> None:
    from rankstream.stream.errors import ConfigError

    broken = tmp_path / "broken"
    shutil.copytree(new_encoder, broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ConfigError, match="refused"):
        install(settings, broken)
    assert not (settings.encoder_dir.parent / NEW).exists()
    # Another artifact under a version already installed with other files: refused, the installed one kept.
    (settings.encoder_dir.parent / NEW).mkdir()
    with pytest.raises(ConfigError, match="other files"):
        install(settings, new_encoder)
