"""Hot swap: a replica follows the registry's active version and switches to it between micro-batches.

Everything slow or risky happens off the hot path, in a worker thread, while the old version keeps
scoring: checksums and input spec (Ranker.load), the smoke test against the manifest's reference
outputs, a warm-up at serving shapes. Only then does the scorer's ranker reference change; the batch in
flight finishes with the version it started with (Scorer._score reads the reference once per batch).
"""

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

import numpy as np
from redis.exceptions import RedisError

from rankstream.stream import metrics as m
from rankstream.stream.artifact import MANIFEST
from rankstream.stream.canary import Policy
from rankstream.stream.errors import ArtifactError, StoreError
from rankstream.stream.features import candidate_text, history_text
from rankstream.stream.ranker import Ranker
from rankstream.stream.registry import ANNOUNCE_CHANNEL, Registry
from rankstream.stream.rollouts import Canary, Shadow, conclude, judge, read_canary, read_shadow
from rankstream.stream.scorer import Arm, Scorer
from rankstream.stream.shadow import ShadowScorer
from rankstream.stream.signals import SIGNALS

log = logging.getLogger(__name__)

LoadRanker = Callable[..., Ranker]  # (artifact dir, **Ranker.load options) -> Ranker
_RELEASE_AFTER_S = 2.0


def release_memory() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim; a no-op elsewhere).

    No garbage collection first: a ranker holds no reference cycle, so the old session is freed the
    moment its last reference goes (tests/unit/stream/test_follow.py), while a full collection walks
    every table entry cached since start and stalls the event loop (0.03 s in a bare process, about
    0.5 s with a million small objects). malloc_trim takes no GIL: callers run it in a thread."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def warm_up(ranker: Ranker, titles: list[str], lists: int = 3, per_list: int = 50, *, top: int = 0) -> None:
    """Score a few lists at serving shapes (`top`: the pairs cross-encoded per list, as the scorer sets
    it), so the first real batch does not pay for allocations. Larger shapes than served would only
    take CPU from the batches in flight while the old version keeps scoring."""
    if not titles:
        return
    query = history_text(titles[:5])
    pairs = [(query, candidate_text(titles[i % len(titles)], i)) for i in range(per_list)]
    # A model that reads serve-time signals gets rows of the right width; their values do not matter here.
    signals = None if ranker.signals is None else [np.zeros((per_list, len(SIGNALS.names)), np.float32)] * lists
    ranker.score_lists([pairs] * lists, signals, top=top if ranker.linear is not None else 0)


def _release_in_thread() -> None:
    asyncio.get_running_loop().run_in_executor(None, release_memory)


class ModelFollower:
    """Keeps one scorer on the registry's active version, and on its canary and shadow versions if any;
    refuses bad artifacts and keeps serving; judges a running canary (stream/rollouts.py)."""

    def __init__(
        self, registry: Registry, scorer: Scorer, load: LoadRanker, *, replica: str, poll_s: float = 2.0
    ) -> None:
        self.registry = registry
        self.scorer = scorer
        self.load = load
        self.replica = replica
        self.poll_s = poll_s
        self.swaps = 0
        self._since = time.time()
        # version -> manifest mtime when refused: retried only if the artifact is replaced.
        self._refused: dict[str, int] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """End `run()` at its next wake-up. Cancellation alone is not enough: a cancel that lands as
        the pub/sub read times out can be swallowed by the client's timeout handling."""
        self._stopping.set()

    async def run(self) -> None:
        """Until stopped: on each announcement, and every `poll_s` regardless, converge on the active version."""
        while not self._stopping.is_set():
            pubsub = self.registry.client.pubsub()
            try:
                await pubsub.subscribe(ANNOUNCE_CHANNEL)
                while not self._stopping.is_set():
                    await self.check()
                    # A message only wakes us early; the active key is the truth (pub/sub may drop one).
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_s)
            except (RedisError, StoreError, OSError) as exc:
                log.warning("model follower: Redis unavailable, retrying in %.0fs: %s", self.poll_s, exc)
                await asyncio.sleep(self.poll_s)
            except Exception:  # noqa: BLE001 - a follower that dies silently would pin the replica forever
                log.exception("model follower failed; retrying in %.0fs", self.poll_s)
                await asyncio.sleep(self.poll_s)
            finally:
                await pubsub.aclose()

    async def check(self) -> bool:
        """Swap if the active version differs from the one served; True when a swap happened. Then
        follow the canary and the shadow, and judge the canary."""
        version = await self.registry.active()
        current = self.scorer.ranker.version
        swapped = False
        if version is not None and version != current and not self._still_refused(version):
            swapped = await self.swap_to(version)
        await self._follow_canary(await read_canary(self.registry))
        await self._follow_shadow(await read_shadow(self.registry))
        await self.registry.report_serving(self.replica, self.scorer.ranker.version, self._since)
        return swapped

    async def _follow_canary(self, canary: Canary | None) -> None:
        arm = self.scorer.canary
        if canary is None or canary.version == self.scorer.ranker.version:
            if arm is not None:
                self.scorer.use_canary(None)
                log.info("canary %s ended on this replica", arm.ranker.version)
            return
        if arm is None or (arm.ranker.version, arm.share, arm.tag) != (canary.version, canary.share, canary.tag):
            if arm is not None and arm.ranker.version == canary.version:
                ranker = arm.ranker
            elif (ranker := await self._load(canary.version)) is None:
                await conclude(self.registry, canary, "canary-rollback", False, {"reason": "artifact refused"})
                return
            self.scorer.use_canary(Arm(ranker, canary.share, canary.tag))
            log.info("canary %s serves %.1f%% of users beside %s", canary.version, canary.share * 100, canary.active)
        s = self.scorer.settings
        policy = Policy(s.canary_min_events, s.canary_max_p99_ratio, s.canary_p99_slack_ms, s.canary_max_error_excess)
        await judge(self.registry, policy)

    async def _follow_shadow(self, shadow: Shadow | None) -> None:
        current = self.scorer.shadow
        wanted = None if shadow is None else (shadow.version, shadow.sample)
        if current is not None and wanted != (current.version, current.sample):
            self.scorer.use_shadow(None)
            await current.close()
            current = None
        if shadow is None or current is not None or self._still_refused(shadow.version):
            return
        # One thread that sleeps between runs: the shadow must not take the serving session's cores.
        if (ranker := await self._load(shadow.version, threads=1, spin=False)) is not None:
            s = self.scorer.settings
            self.scorer.use_shadow(ShadowScorer(ranker, shadow.sample, s, self.scorer.tables, s.shadow_max_share))
            log.info("shadow %s scores %.1f%% of users off the hot path", shadow.version, shadow.sample * 100)

    async def _load(self, version: str, **options: object) -> Ranker | None:
        """The version loaded, verified and warmed up off the hot path; None (and logged) if refused."""
        try:
            return await asyncio.to_thread(self._load_and_warm, version, **options)
        except ArtifactError as exc:
            self._refused[version] = self._manifest_mtime(version)
            m.MODELS_REFUSED.labels(version).inc()
            log.error("refused model %s, still serving %s: %s", version, self.scorer.ranker.version, exc)
            return None

    async def swap_to(self, version: str) -> bool:
        old = self.scorer.ranker.version
        t0 = time.perf_counter()
        arm = self.scorer.canary
        if arm is not None and arm.ranker.version == version:  # a promoted canary: already loaded and warm
            ranker: Ranker | None = arm.ranker
        else:
            ranker = await self._load(version)
        if ranker is None:
            return False
        self.scorer.use(ranker)
        # The old session goes once the batch in flight (which may hold it) is written; then hand its
        # memory back to the OS, or every swap would leave the process a little larger.
        asyncio.get_running_loop().call_later(_RELEASE_AFTER_S, _release_in_thread)
        took = time.perf_counter() - t0
        self.swaps += 1
        self._since = time.time()
        m.SWAP_SECONDS.observe(took)
        log.info("swapped model %s -> %s (load, verify, smoke test, warm-up: %.2fs)", old, version, took)
        return True

    def _load_and_warm(self, version: str, **options: object) -> Ranker:
        ranker = self.load(self.registry.path(version), **options)
        self.scorer.check_servable(ranker)
        warm_up(ranker, self.scorer.sample_titles(), top=self.scorer.rerank_top(ranker))
        return ranker

    def _still_refused(self, version: str) -> bool:
        return version in self._refused and self._refused[version] == self._manifest_mtime(version)

    def _manifest_mtime(self, version: str) -> int:
        try:
            return (self.registry.root / version / MANIFEST).stat().st_mtime_ns
        except OSError:
            return -1
