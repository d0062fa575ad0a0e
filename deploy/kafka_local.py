"""One Apache Kafka broker in KRaft mode (broker + controller in one JVM), run from its Maven jars."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from rankstream.deploy.errors import StackError
from rankstream.deploy.probe import wait_ready as probe_ready

log = logging.getLogger(__name__)
T = TypeVar("T")

KAFKA_VERSION = "4.1.1"
HEAP = "-Xmx512m"


def java() -> str:
    """Path of `java`, or a StackError naming the package that installs it."""
    found = shutil.which("java")
    if found is None:
        raise StackError("java not found: install it with `apt-get install -y openjdk-17-jre-headless`")
    return found


def packaged_file(name: str) -> bytes:
    """A file shipped in rankstream/deploy/kafka/ (pom.xml, log4j2.properties)."""
    return resources.files("rankstream.deploy").joinpath("kafka", name).read_bytes()


def cache_dir() -> Path:
    return Path(os.environ.get("RANKSTREAM_CACHE") or Path.home() / ".cache" / "rankstream")


def ensure_kafka_jars() -> Path:
    """The folder of Kafka jars, fetched with Maven into the user cache the first time, reused after."""
    pom = packaged_file("pom.xml")
    home = cache_dir() / f"kafka-{KAFKA_VERSION}"
    libs, marker = home / "libs", home / "libs.complete"
    # The marker holds the pom's digest: a half-finished fetch, or one for an older pom, is redone.
    digest = hashlib.sha256(pom).hexdigest()
    if marker.is_file() and marker.read_text() == digest:
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first runs at once fetch once
        if marker.is_file() and marker.read_text() == digest:
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("mvn not found (fetches the Kafka jars once): `apt-get install -y maven`")
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        (home / "pom.xml").write_bytes(pom)
        log.info("fetching Kafka %s jars into %s (once; about a minute)", KAFKA_VERSION, libs)
        argv = [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies"]
        argv += [f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise StackError(
                f"fetching the Kafka jars failed (Maven Central must be reachable, or ~/.m2 populated):\n"
                f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
            )
        marker.write_text(digest)
    return libs


def new_cluster_id() -> str:
    """A 22-character base64url cluster id; never one starting with '-', which option parsers misread."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def write_config(kafka_dir: Path, port: int, controller_port: int, extra: dict[str, str] | None = None) -> Path:
    """Write server.properties and log4j2.properties under kafka_dir; return the former.

    `extra` adds or replaces properties (listeners, TLS, SASL for a secured broker in tests).
    """
    (kafka_dir / "logs").mkdir(parents=True, exist_ok=True)
    (kafka_dir / "log4j2.properties").write_bytes(packaged_file("log4j2.properties"))
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(kafka_dir / "data"),
        "num.partitions": "4",
        # A single node: every internal topic must fit on one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Let test and demo consumers use short sessions, so a killed replica's partitions move on quickly.
        "group.min.session.timeout.ms": "1000",
        # After a crash (kill -9) the restarted broker cannot register until the old registration's
        # session expires; a session shorter than Kafka's default lets crash-restart tests go on sooner.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    props |= extra or {}
    path = kafka_dir / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def _jvm(libs: Path, kafka_dir: Path) -> list[str]:
    return [
        java(),
        HEAP,
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={kafka_dir / 'logs'}",
        f"-Dlog4j2.configurationFile={kafka_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",  # the JVM expands this wildcard itself; no shell involved
    ]


def is_formatted(kafka_dir: Path) -> bool:
    return (kafka_dir / "data" / "meta.properties").exists()


def format_storage(libs: Path, kafka_dir: Path, config: Path, cluster_id: str, extra_args: Sequence[str] = ()) -> None:
    """Format the log directory once; later starts reuse it (and the topics in it).

    `extra_args` go to `kafka-storage format` as they are (`--add-scram ...`: SCRAM users exist only if
    created here or by an admin client later).
    """
    argv = [*_jvm(libs, kafka_dir), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}"]
    argv += ["-c", str(config), *extra_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise StackError(f"formatting Kafka storage in {kafka_dir} failed:\n{done.stdout}{done.stderr}")
    log.info("formatted Kafka storage in %s (cluster id %s)", kafka_dir / "data", cluster_id)


def broker_argv(libs: Path, kafka_dir: Path, config: Path) -> list[str]:
    return [*_jvm(libs, kafka_dir), "kafka.Kafka", str(config)]


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when the caller's thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _describe(bootstrap: str, client_options: dict[str, Any]) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(**({"bootstrap_servers": bootstrap, "request_timeout_ms": 5000} | client_options))
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def wait_ready(bootstrap: str, timeout: float, alive: Callable[[], bool], **client_options: Any) -> None:
    """Block until the broker answers a metadata request; StackError if it dies or the timeout passes.

    `client_options` go to the probing admin client (security_protocol, ssl_context, sasl_*).
    """
    host, _, port = bootstrap.rpartition(":")

    def probe() -> dict[str, Any]:
        # A plain connect first: aiokafka logs every refused connection at ERROR level.
        socket.create_connection((host, int(port)), timeout=1).close()
        return run_sync(lambda: _describe(bootstrap, client_options))

    cluster = probe_ready(
        probe,
        (KafkaError, OSError, TimeoutError),
        alive=alive,
        timeout=timeout,
        interval=0.5,
        exited="Kafka exited while starting; see kafka/kafka.out in the state dir",
        late=f"Kafka on {bootstrap} not ready after {timeout:.0f}s; see kafka/kafka.out in the state dir",
    )
    log.debug("kafka cluster %s answers on %s", cluster.get("cluster_id"), bootstrap)


async def _create_topics(
    bootstrap: str,
    topics: dict[str, int],
    topic_configs: Mapping[str, Mapping[str, str]],
    client_options: dict[str, Any],
) -> None:
    admin = AIOKafkaAdminClient(**({"bootstrap_servers": bootstrap, "request_timeout_ms": 30000} | client_options))
    try:
        await admin.start()
        new = [new_topic(name, n, topic_configs.get(name)) for name, n in topics.items()]
        response = await admin.create_topics(new)
    finally:
        await admin.close()
    # aiokafka returns per-topic error codes instead of raising.
    for topic, code, *message in response.topic_errors:
        if code != 0 and for_code(code) is not TopicAlreadyExistsError:
            raise StackError(f"creating topic {topic!r} failed: {for_code(code).__name__} {message}")


def new_topic(name: str, partitions: int, config: Mapping[str, str] | None = None) -> NewTopic:
    """One topic to create, replication 1, with its own settings (`cleanup.policy`, ...) if any."""
    return NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=dict(config or {}))


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    *,
    topic_configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_options: Any,
) -> None:
    """Create topics (name -> partitions, replication 1); topics that already exist are left as they are.

    `topic_configs` gives some of them settings of their own (name -> {"cleanup.policy": "compact"});
    the rest get the broker's defaults. A topic that already exists keeps the settings it has.
    `client_options` go to the admin client (`Settings.kafka_client_options()` on a secured cluster).
    """
    unknown = set(topic_configs or {}) - set(topics)
    if unknown:
        raise ValueError(f"topic_configs for topics not being created: {sorted(unknown)}")
    run_sync(lambda: _create_topics(bootstrap, topics, topic_configs or {}, client_options))
    log.info("topics ready on %s: %s", bootstrap, topics)
