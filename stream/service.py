"""The scorer process: settings -> model -> Redis -> Kafka loop, with a graceful SIGTERM drain."""

import asyncio
import logging
import signal
from pathlib import Path

from rankstream.stream.errors import ConfigError
from rankstream.stream.metrics import serve_metrics
from rankstream.stream.ranker import Ranker
from rankstream.stream.scorer import Scorer, Stats
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store

log = logging.getLogger(__name__)


def resolve_model_dir(path: Path | None) -> Path:
    """An artifact directory, or a folder of versioned artifacts (the newest version is served)."""
    if path is None:
        raise ConfigError("no model: set RANKSTREAM_MODEL_DIR to an artifact directory (see `rankstream build-model`)")
    if (path / "manifest.json").is_file():
        return path
    versions = sorted(p for p in path.glob("*/manifest.json")) if path.is_dir() else []
    if not versions:
        raise ConfigError(f"RANKSTREAM_MODEL_DIR={path} holds no artifact (no manifest.json in it or below it)")
    return versions[-1].parent


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
    try:
        model_dir = resolve_model_dir(settings.model_dir)
        ranker = Ranker.load(model_dir, threads=settings.threads, batch_size=settings.score_batch_size)
        store = Store.from_url(settings.redis_url, ttl_s=settings.rec_ttl_s, **settings.redis_client_options())
        await store.ping()
        serve_metrics(settings.metrics_port)
        scorer = Scorer(settings, ranker, store)
        if stop_requested.is_set():
            scorer.stop()
        await scorer.start()
        try:
            return await scorer.run()
        finally:
            await scorer.close()
    finally:
        if store is not None:
            await store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
