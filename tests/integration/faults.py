"""Tools for fault tests: scorer processes, a steady producer, a reference replay, a monotonicity watch."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from rankstream.stream.events import ClickEvent
from rankstream.stream.store import Store

from .conftest import ITEMS


def scorer_env(stack, topic: str, model: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        **os.environ,
        "RANKSTREAM_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RANKSTREAM_REDIS_URL": stack.redis_url,
        "RANKSTREAM_MODEL_DIR": str(model),
        "RANKSTREAM_TOPIC": topic,
        "RANKSTREAM_DLQ_TOPIC": f"{topic}.dlq",
        "RANKSTREAM_GROUP_ID": f"g-{topic}",
        "RANKSTREAM_TOP_K": "5",
        "RANKSTREAM_CANDIDATES": "10",
        "RANKSTREAM_BATCH_MAX_RECORDS": "40",
        "RANKSTREAM_BATCH_LINGER_MS": "20",
        "RANKSTREAM_REDIS_TIMEOUT_S": "2",
        # Short sessions: a killed replica's partitions move within seconds, not the default 10 s.
        "RANKSTREAM_KAFKA_CONSUMER_OPTIONS": json.dumps({"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}),
        **extra,
    }


_LOGS: dict[int, Path] = {}


def spawn_scorer(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`rankstream serve` as its own process, as an operator runs it."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli.main", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    _LOGS[proc.pid] = log_path
    return proc


def assert_running(proc: subprocess.Popen) -> None:
    """Fail with the end of the scorer's log, so a crash in CI says why."""
    if proc.poll() is not None:
        tail = "\n".join(_LOGS[proc.pid].read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"scorer exited with {proc.returncode}; its log ends:\n{tail}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def stop_gracefully(proc: subprocess.Popen) -> int:
    assert_running(proc)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


@dataclass
class Reference:
    """What every user's state must be once all produced events are reflected."""

    last: dict[str, tuple[int, int]] = field(default_factory=dict)  # user -> (partition, offset)
    items: dict[str, list[str]] = field(default_factory=dict)  # user -> items in event order
    sent: int = 0

    def history(self, user: str) -> list[str]:
        return list(dict.fromkeys(reversed(self.items[user])))


async def produce_steadily(
    bootstrap: str,
    topic: str,
    ref: Reference,
    *,
    users: int,
    count: int,
    rate: float,
    seed: int = 0,
    until: asyncio.Event | None = None,
) -> None:
    """Send up to `count` valid events at about `rate` per second (stopping early once `until` is set),
    recording where each landed."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    t0 = datetime(2011, 11, 1, tzinfo=UTC)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for n in range(count):
            if until is not None and until.is_set():
                break
            user = f"u{rng.randrange(users)}"
            item = rng.choice(ITEMS)
            ev = ClickEvent(user_id=user, item_id=item, ts=t0 + timedelta(seconds=n))
            # One at a time per user would be slow; awaiting the send keeps the reference order exact.
            meta = await (await producer.send(topic, key=user.encode(), value=ev.to_bytes()))
            ref.last[user] = (meta.partition, meta.offset)
            ref.items.setdefault(user, []).append(item)
            ref.sent += 1
            ahead = (n + 1) / rate - (loop.time() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()


class Watch:
    """Polls every user's list and records any that moved backwards (a lower offset than seen before)."""

    def __init__(self, store: Store, users: int) -> None:
        self.store = store
        self.users = [f"u{i}" for i in range(users)]
        self.seen: dict[str, int] = {}
        self.backwards: list[str] = []
        self.polls = 0

    def note(self, user: str, offset: int) -> None:
        if offset < self.seen.get(user, -1):
            self.backwards.append(f"{user}: {self.seen[user]} -> {offset}")
        self.seen[user] = max(self.seen.get(user, -1), offset)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                for u in self.users:
                    rec = await self.store.read_list(u)
                    if rec is not None:
                        self.note(u, rec["offset"])
                self.polls += 1
            except Exception:  # noqa: BLE001 - Redis may be down on purpose in some tests
                pass
            await asyncio.sleep(0.1)


async def all_reflected(store: Store, ref: Reference) -> bool:
    """Whether every user's list reflects their last produced event (for `wait_for`)."""
    for user, (partition, offset) in ref.last.items():
        rec = await store.read_list(user)
        if rec is None or (rec["partition"], rec["offset"]) != (partition, offset):
            return False
    return True


async def assert_all_reflected(store: Store, ref: Reference) -> None:
    """Every user's list reflects their last event, and their history holds each item once, newest first."""
    missing = []
    for user, (partition, offset) in ref.last.items():
        rec = await store.read_list(user)
        if rec is None or (rec["partition"], rec["offset"]) != (partition, offset):
            missing.append(f"{user}: want {partition}@{offset}, got {rec and (rec['partition'], rec['offset'])}")
            continue
        hist = await store.read_history(user)
        if hist != ref.history(user)[: len(hist)] or len(hist) != min(len(ref.history(user)), 50):
            missing.append(f"{user}: history {hist} != {ref.history(user)}")
    assert not missing, f"{len(missing)} users not reflected: {missing[:5]}"


async def committed_total(bootstrap: str, group: str) -> int:
    """Sum of the group's committed offsets: grows each time a scorer commits a batch."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        return 0  # no coordinator yet: a group that has never committed
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for meta in offsets.values())
