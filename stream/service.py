"""The scorer process: settings -> model -> Redis -> Kafka loop, with a graceful SIGTERM drain."""

import asyncio
import contextlib
import logging
import os
import signal
import socket
from functools import partial
from pathlib import Path

from rankstream.stream.artifact import MANIFEST
from rankstream.stream.errors import ArtifactError, ConfigError
from rankstream.stream.follow import ModelFollower
from rankstream.stream.health import HealthServer
from rankstream.stream.kafka_check import check_kafka
from rankstream.stream.ranker import Ranker, serving_loader
from rankstream.stream.redis_client import check_redis
from rankstream.stream.registry import Registry, list_versions
from rankstream.stream.scorer import Scorer, Stats
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)


def is_artifact(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def resolve_model_dir(path: Path | None) -> Path:
    """An artifact directory, or a folder of versioned artifacts (the newest version)."""
    if path is None:
        raise ConfigError(
            "no model: set RANKSTREAM_MODEL_DIR to an artifact directory (see `rankstream compress --install`)"
        )
    if is_artifact(path):
        return path
    versions = list_versions(path)
    if not versions:
        raise ConfigError(f"RANKSTREAM_MODEL_DIR={path} holds no artifact (no manifest.json in it or below it)")
    return path / versions[-1]


async def initial_ranker(registry: Registry, load: "partial[Ranker]") -> Ranker:
    """The active version; if Redis names none, the newest. If the active one is refused, the most
    recent earlier active version that loads (logged as an error: this replica then differs from the
    others until the pointer is fixed)."""
    active = await registry.active()
    if active is None:
        newest = registry.versions()[-1] if registry.versions() else None
        if newest is None:
            raise ConfigError(f"RANKSTREAM_MODEL_DIR={registry.root} holds no artifact and Redis names no active one")
        log.warning("no active model version in Redis; serving the newest, %s (`rankstream models promote`)", newest)
        return load(registry.path(newest))
    tried = [active] + [a.version for a in await registry.activations() if a.version != active]
    errors = []
    for version in dict.fromkeys(tried):
        try:
            ranker = load(registry.path(version))
        except ArtifactError as exc:
            errors.append(str(exc))
            log.error("refused model %s: %s", version, exc)
            continue
        if version != active:
            log.error("serving %s instead of the active %s, which was refused", version, active)
        return ranker
    raise ArtifactError(f"no loadable model: {'; '.join(errors)}")


# Long because setup and teardown (signals, store, model, health, scorer, follower) nest in one
# try/finally, in the order a clean exit needs.
async def serve(settings: Settings) -> Stats:
    """Run one scorer until SIGTERM/SIGINT, then finish the batch in flight, commit and exit.

    The signal handlers go in first: a SIGTERM that arrives while the model loads still ends in a
    clean exit (nothing was consumed yet) rather than the default kill.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    scorer: Scorer | None = None

    def on_signal() -> None:
        stop_requested.set()
        if scorer is not None:
            scorer.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    store = None
    follower_task = None
    health = None
    try:
        resolve_model_dir(settings.model_dir)  # fails before any connection if there is nothing to serve
        load = serving_loader(settings)
        store = Store.from_settings(settings)
        # Before anything starts: a refused login or an untrusted certificate ends the process with one line.
        await check_redis(store.client)
        await check_kafka(settings)
        registry = None
        assert settings.model_dir is not None
        if is_artifact(settings.model_dir):
            ranker = load(settings.model_dir)  # one fixed artifact: no following
        else:
            registry = Registry(settings.model_dir, store.client)
            ranker = await initial_ranker(registry, load)
        scorer = Scorer(settings, ranker, store)
        if settings.metrics_port:
            health = HealthServer(scorer.probe, settings.metrics_port)
            await health.start()
        if stop_requested.is_set():
            scorer.stop()
        await scorer.start()
        replica = settings.replica or f"{socket.gethostname()}-{os.getpid()}"
        if registry is not None:
            follower = ModelFollower(registry, scorer, load, replica=replica, poll_s=settings.model_poll_s)
            follower_task = asyncio.create_task(follower.run())
        try:
            return await scorer.run()
        finally:
            if follower_task is not None:
                follower.stop()
                follower_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(follower_task, timeout=settings.model_poll_s + 5)
                with contextlib.suppress(Exception):
                    await registry.forget_replica(replica)  # type: ignore[union-attr]
            await scorer.close()
    finally:
        if health is not None:
            await health.stop()
        if store is not None:
            await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
