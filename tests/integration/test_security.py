"""Security on the real services: Redis with ACL users and TLS only, Kafka with SASL_SSL (SCRAM-SHA-512) only.

`rankstream load`, `models publish | list | inspect`, `serve` and `recompress --from-kafka` run as processes
against them; a wrong password and an untrusted CA each stop a command at start with one line saying which;
no secret shows up in what those processes printed, in the scorer's metrics, or in a manifest.
"""

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from rankstream.data.prepare import Prepared
from rankstream.deploy.probe import free_port
from rankstream.jobs.recompress import CompressRun
from rankstream.stream.events import ClickEvent
from rankstream.stream.redis_client import connect_from_settings
from rankstream.stream.registry import Registry
from rankstream.stream.settings import Settings
from rankstream.stream.store import Store
from tests.model_builders import stand_in_artifact, tiny_compress_run, tiny_prepared

from .conftest import wait_for
from .faults import scorer_env
from .secure import Run, SecureStack, Serving, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "clicks-secure"
SERVED = "c-tiny-student-l2-int8"  # the student of tiny_compress_run
USERS = [f"s{n}" for n in range(6)]


@dataclass
class SecuredRuns:
    """Every process run against the secured stack, the scorer's metrics, and where the models went."""

    runs: dict[str, Run] = field(default_factory=dict)
    metrics: str = ""
    lists: dict[str, dict | None] = field(default_factory=dict)
    registry: Path = Path()
    work: Path = Path()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_prepared(tmp_path_factory.mktemp("secure-data"))


async def produce(settings: Settings, events: list[ClickEvent]) -> None:
    """Send events keyed by user, through the secured listener."""
    producer = AIOKafkaProducer(acks="all", **settings.kafka_client_options())
    await producer.start()
    try:
        for ev in events:
            await producer.send(settings.topic, ev.to_bytes(), key=ev.user_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _scored(store: Store, serving: Serving) -> dict[str, dict | None] | None:
    """Every user's list, once each has one."""
    serving.check_running()
    lists = {u: await store.read_list(u) for u in USERS}
    return lists if all(lists.values()) else None


async def serve_some_events(secure_stack: SecureStack, registry: Path, folder: Path, out: SecuredRuns) -> None:
    """`rankstream serve` on the registry until every user has a list; its metrics; then SIGTERM."""
    port = free_port()
    env = scorer_env(secure_stack, TOPIC, registry, **secure_stack.variables(), RANKSTREAM_METRICS_PORT=str(port))
    serving = Serving(env, folder)
    store = Store(connect_from_settings(secure_stack.settings()), ttl_s=60)
    try:
        await wait_for(partial(_started, serving), limit_s=120)
        t0 = datetime(2024, 2, 20, 10, tzinfo=UTC)
        events = [
            ClickEvent(user_id=u, item_id=f"i{(3 * k + n) % 30}", ts=t0 + timedelta(minutes=n))
            for n in range(3)
            for k, u in enumerate(USERS)
        ]
        await produce(secure_stack.settings(topic=TOPIC), events)
        out.lists = await wait_for(partial(_scored, store, serving), limit_s=120)
        metrics = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", timeout=10)
        out.metrics = metrics.read().decode()
    finally:
        await store.close()
        out.runs["serve"] = await asyncio.to_thread(serving.stop)


async def _started(serving: Serving) -> bool:
    serving.check_running()
    return "scorer started" in serving.log()


async def recompress_from_kafka(secure_stack: SecureStack, env: dict[str, str], data: Path, run: Path) -> Run:
    """The window's clicks go through the secured listener; the cycle reads them back and publishes."""
    frame = Prepared.load(data).interactions
    events = [
        ClickEvent(user_id=u, item_id=i, ts=t.to_pydatetime(), event="purchase")
        for u, i, t in zip(frame["user_id"], frame["item_id"], frame["ts"], strict=True)
    ]
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    await produce(secure_stack.settings(topic=TOPIC), events)
    args = ["recompress", "--preset", "tiny", "--from-kafka", "--since", since, "--tolerance", "1.0"]
    args += ["--data", str(data), "--compress-run", str(run), "--registry", env["RANKSTREAM_MODEL_DIR"]]
    return await run_cli(env, *args, "--work", str(Path(env["RANKSTREAM_HOME"]) / "recompress"))


@pytest.fixture(scope="module")
async def secured(
    secure_stack: SecureStack, prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecuredRuns]:
    """One pass of every command over the secured stack, shared by the tests that check its parts."""
    folder = tmp_path_factory.mktemp("secured-runs")
    run = await asyncio.to_thread(tiny_compress_run, folder / "compress")
    out = SecuredRuns(registry=folder / "models", work=folder / "home" / "recompress")
    env = secure_stack.env(
        RANKSTREAM_TOPIC=TOPIC,
        RANKSTREAM_DLQ_TOPIC=f"{TOPIC}.dlq",
        RANKSTREAM_MODEL_DIR=str(out.registry),
        RANKSTREAM_HOME=str(folder / "home"),
    )
    out.runs["load"] = await run_cli(env, "load", "--data", str(prepared), "--partitions", "2")
    assert out.runs["load"].returncode == 0, out.runs["load"].stderr  # nothing below works without it
    out.runs["publish"] = await run_cli(env, "models", "publish", str(CompressRun.load(run).best_artifact))
    assert out.runs["publish"].returncode == 0, out.runs["publish"].stderr
    await serve_some_events(secure_stack, out.registry, folder / "serve", out)
    out.runs["recompress"] = await recompress_from_kafka(secure_stack, env, prepared, run)
    out.runs["list"] = await run_cli(env, "models", "list", "--json")
    out.runs["inspect"] = await run_cli(env, "models", "inspect", SERVED)
    yield out


async def test_load_fills_the_secured_redis_and_creates_the_topics(secured: SecuredRuns, secure_stack) -> None:  # type: ignore[no-untyped-def]
    load = secured.runs["load"]
    assert load.returncode == 0 and "loaded 30 catalog items" in load.stdout, load.stderr
    client = connect_from_settings(secure_stack.settings())
    try:
        assert await client.hlen("rs:catalog") == 30
    finally:
        await client.aclose()


async def test_models_publish_list_and_inspect_on_the_secured_redis(secured: SecuredRuns) -> None:
    runs = secured.runs
    assert runs["publish"].stdout.strip() == f"published {SERVED}"
    assert runs["list"].returncode == 0, runs["list"].stderr
    listed = json.loads(runs["list"].stdout)
    assert {v["version"] for v in listed["versions"]} >= {SERVED} and all(v["ok"] for v in listed["versions"])
    assert runs["inspect"].returncode == 0, runs["inspect"].stderr
    inspected = json.loads(runs["inspect"].stdout)
    assert inspected["version"] == SERVED and inspected["checksums"] == "verified"
    assert [a["reason"] for a in inspected["activations"]] == ["publish"]


async def test_the_scorer_serves_from_the_secured_kafka_into_the_secured_redis(secured: SecuredRuns) -> None:
    serve = secured.runs["serve"]
    assert serve.returncode == 0, serve.stderr[-3000:]
    assert {rec["model_version"] for rec in secured.lists.values()} == {SERVED}
    assert all(len(rec["items"]) == 5 for rec in secured.lists.values())  # RANKSTREAM_TOP_K from scorer_env
    written = [line for line in secured.metrics.splitlines() if line.startswith("rankstream_lists_written_total ")]
    assert written and float(written[0].split()[1]) >= len(USERS)


async def test_recompress_reads_the_secured_kafka_and_publishes_to_the_secured_redis(
    secured: SecuredRuns, secure_stack: SecureStack
) -> None:
    result = secured.runs["recompress"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"kafka:{TOPIC}" in result.stdout and "published and activated" in result.stdout
    registry = Registry(secured.registry, connect_from_settings(secure_stack.settings()))
    try:
        active = await registry.active()
        assert active is not None and active != SERVED and registry.verify(active).parent == SERVED
    finally:
        await registry.client.aclose()


def written_texts(secured: SecuredRuns) -> dict[str, str]:
    """Everything the runs printed, the scorer's metrics, and every manifest and JSON record they wrote."""
    texts = {
        f"{name} {stream}": getattr(run, stream)
        for name, run in secured.runs.items()
        for stream in ("stdout", "stderr")
    }
    texts["metrics"] = secured.metrics
    for folder in (secured.registry, secured.work):
        texts |= {str(p): p.read_text(errors="replace") for p in sorted(folder.rglob("*.json"))}
    return texts


async def test_no_secret_in_any_log_metric_manifest_or_inspect_output(
    secured: SecuredRuns, secure_stack: SecureStack
) -> None:
    texts = written_texts(secured)
    # Guards the guard: the texts searched are the real ones, not empty files.
    assert "scorer started" in texts["serve stderr"] and "rankstream_events_total" in texts["metrics"]
    assert '"checksums": "verified"' in texts["inspect stdout"]
    assert sum(Path(name).name == "manifest.json" for name in texts) >= 2  # the published and the recompressed
    secrets = secure_stack.secrets()
    assert sum(" line " in what for what in secrets) > 40  # both private keys, line by line
    leaks = [
        f"{what} in {where}" for where, text in texts.items() for what, secret in secrets.items() if secret in text
    ]
    assert leaks == []


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact `serve` accepts as a model directory: it checks connections before it loads a model."""
    return stand_in_artifact(tmp_path_factory.mktemp("stand-in") / "v-stand-in", "v-stand-in", ["test"])


WRONG = "not-the-password"
REFUSALS = {
    "redis password": ("RANKSTREAM_REDIS_PASSWORD", "Redis refused the login"),
    "redis ca": ("RANKSTREAM_REDIS_SSL_CA", "Redis's TLS certificate is not trusted"),
    "kafka password": ("RANKSTREAM_KAFKA_SASL_PASSWORD", "Kafka refused the SASL login"),
    "kafka ca": ("RANKSTREAM_KAFKA_SSL_CAFILE", "Kafka's TLS certificate is not trusted"),
}


# Every command that opens a connection, with each refusal it can meet (`models` uses Redis only).
REFUSED_COMMANDS = [
    (refusal, command)
    for refusal in REFUSALS
    for command in ("serve", "load", "recompress", "models")
    if not (command == "models" and refusal.startswith("kafka"))
]


def command_line(command: str, prepared: Path, stand_in: Path, folder: Path) -> list[str]:
    """Arguments that get `command` as far as its first connection; none of it runs past the check."""
    if command == "serve":
        return ["serve", "--model-dir", str(stand_in)]
    if command == "load":
        return ["load", "--data", str(prepared)]
    if command == "models":
        return ["models", "list"]
    return ["recompress", "--preset", "tiny", "--from-kafka", "--data", str(prepared), "--work", str(folder)]


@pytest.mark.parametrize(("refusal", "command"), REFUSED_COMMANDS)
async def test_a_wrong_password_or_an_untrusted_ca_stops_at_start_with_one_line(
    secure_stack: SecureStack, prepared: Path, stand_in: Path, tmp_path: Path, refusal: str, command: str
) -> None:
    variable, says = REFUSALS[refusal]
    bad = str(secure_stack.stranger_ca) if refusal.endswith(" ca") else WRONG
    env = secure_stack.env(
        RANKSTREAM_TOPIC=TOPIC,
        RANKSTREAM_DLQ_TOPIC=f"{TOPIC}.dlq",
        RANKSTREAM_MODEL_DIR=str(tmp_path / "models"),
        **{variable: bad},
    )
    args = command_line(command, prepared, stand_in, tmp_path / "work")
    run = await run_cli(env, *args, limit_s=60)
    # Progress logged at INFO before the check may stay; no warning, no traceback, one error line.
    lines = [line for line in run.stderr.strip().splitlines() if " INFO " not in line]
    assert run.returncode == 2, run.stderr[-3000:]  # ConfigError: retrying cannot cure it
    assert len(lines) == 1 and lines[0].startswith(f"rankstream: error: {says}"), run.stderr[-3000:]
    assert variable in lines[0]  # says what to fix
    assert all(secret not in run.stderr + run.stdout for secret in (WRONG, *secure_stack.secrets().values()))
