"""docker-compose.yml and the images it builds: valid for docker-compose, wired as the README says."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_docker_compose_accepts_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: install it with `apt-get install -y docker-compose`")
    done = subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "prepare", "model-builder", "encoder-builder", "scorer", "tables", "catalog"} <= set(
        services
    )
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"] == "redis:7"
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["redis"]
    assert _env(services["kafka"])["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for served in ("scorer", "tables", "catalog"):
        assert services[served]["build"]["dockerfile"] == "deploy/docker/Dockerfile.scorer"
    for job in ("prepare", "model-builder", "encoder-builder"):
        assert services[job]["build"]["dockerfile"] == "deploy/docker/Dockerfile.jobs"


def test_scorer_waits_for_its_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["scorer"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "model-builder": {"condition": "service_completed_successfully"},
    }
    done = {"condition": "service_completed_successfully"}
    assert services["model-builder"]["depends_on"]["prepare"] == done
    assert services["prepare"]["depends_on"]["kafka"] == {"condition": "service_healthy"}


def test_scorer_environment_and_model_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = _env(services["scorer"])
    assert env == env | {
        "RANKSTREAM_KAFKA_BOOTSTRAP": "kafka:9092",
        "RANKSTREAM_REDIS_URL": "redis://redis:6379/0",
        "RANKSTREAM_MODEL_DIR": "/models",
        "RANKSTREAM_TOPIC": "clicks",
        "RANKSTREAM_DLQ_TOPIC": "clicks.dlq",
        "RANKSTREAM_GROUP_ID": "rankstream-scorer",
    }
    assert "models:/models:ro" in services["scorer"]["volumes"]
    assert "models:/models" in services["model-builder"]["volumes"]
    assert "models" in compose["volumes"]
    # `--scale scorer=3` needs replicas without a fixed name or host port.
    assert "container_name" not in services["scorer"] and "ports" not in services["scorer"]


def test_tables_job_runs_beside_the_scorer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    tables = services["tables"]
    # The image's ENTRYPOINT is `rankstream serve`: a `command` would only add arguments to it.
    assert tables["entrypoint"] == ["rankstream", "tables"] and "command" not in tables
    assert tables["image"] == services["scorer"]["image"]
    kafka_redis = ("RANKSTREAM_KAFKA", "RANKSTREAM_REDIS", "RANKSTREAM_TOPIC")
    scorer = {k: v for k, v in _env(services["scorer"]).items() if k.startswith(kafka_redis)}
    assert {k: v for k, v in _env(tables).items() if k.startswith(kafka_redis)} == scorer
    assert _env(tables)["RANKSTREAM_TABLES_GROUP_ID"] != _env(services["scorer"])["RANKSTREAM_GROUP_ID"]
    # `load` (in prepare) seeds the shares the job reads; it needs no model.
    assert tables["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "prepare": {"condition": "service_completed_successfully"},
    }
    assert "volumes" not in tables
    # `--scale tables=2`: no fixed name or host port.
    assert "container_name" not in tables and "ports" not in tables


def test_catalog_job_runs_beside_the_tables_job(compose: dict[str, Any]) -> None:
    services = compose["services"]
    catalog = services["catalog"]
    assert catalog["entrypoint"] == ["rankstream", "catalog", "serve"] and "command" not in catalog
    assert catalog["image"] == services["scorer"]["image"]
    kafka_redis = ("RANKSTREAM_KAFKA", "RANKSTREAM_REDIS", "RANKSTREAM_TOPIC")
    scorer = {k: v for k, v in _env(services["scorer"]).items() if k.startswith(kafka_redis)}
    env = _env(catalog)
    assert {k: v for k, v in env.items() if k.startswith(kafka_redis)} == scorer
    groups = {_env(services["scorer"])["RANKSTREAM_GROUP_ID"], _env(services["tables"])["RANKSTREAM_TABLES_GROUP_ID"]}
    assert env["RANKSTREAM_CATALOG_GROUP_ID"] not in groups
    # The encoder: read-only from the volume encoder-builder installs it in, at the path the job reads.
    assert "encoders:/encoders:ro" in catalog["volumes"]
    assert "encoders:/encoders" in services["encoder-builder"]["volumes"]
    assert "encoders" in compose["volumes"]
    assert env["RANKSTREAM_ENCODER_DIR"] == "/encoders/current"
    assert "/encoders/current" in services["encoder-builder"]["command"][-1]
    assert catalog["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "encoder-builder": {"condition": "service_completed_successfully"},
    }
    # The healthcheck reads the job's own /healthz, on the port it is told to serve.
    check = " ".join(catalog["healthcheck"]["test"])
    assert f"localhost:{env['RANKSTREAM_METRICS_PORT']}/healthz" in check
    # `--scale catalog=2`: no fixed name or host port.
    assert "container_name" not in catalog and "ports" not in catalog


def test_encoder_builder_builds_once_from_the_prepared_data(compose: dict[str, Any]) -> None:
    builder = compose["services"]["encoder-builder"]
    script = builder["command"][-1]
    assert builder["command"][:2] == ["sh", "-ec"]  # a failed step (the recall gate's exit 4) fails the job
    assert "rankstream embed" in script and "--data /data" in script
    assert script.index("manifest.json") < script.index("rankstream embed")  # skipped once installed
    # Compose reads a single `$` as one of its own variables; the shell's need `$$`.
    assert "$artifact" not in script.replace("$$artifact", "")
    assert builder["depends_on"] == {"prepare": {"condition": "service_completed_successfully"}}
    assert "data:/data:ro" in builder["volumes"]


def test_job_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["model-builder"]["command"][:2] == ["rankstream", "compress"]
    assert "--install /models" in " ".join(services["model-builder"]["command"])
    prepare = " ".join(services["prepare"]["command"])
    assert "rankstream prepare --out /data" in prepare and "rankstream load" in prepare


def test_images_install_what_they_should() -> None:
    scorer = (ROOT / "deploy/docker/Dockerfile.scorer").read_text()
    jobs = (ROOT / "deploy/docker/Dockerfile.jobs").read_text()
    assert "FROM python:3.11-slim" in scorer and "FROM python:3.11-slim" in jobs
    assert "pip install ." in scorer and "[compression]" not in scorer  # no torch in a scorer
    assert 'ENTRYPOINT ["rankstream", "serve"]' in scorer
    assert ".[compression]" in jobs
    # Mount points the jobs user owns, so the named volumes mounted over them are writable.
    assert "chown rankstream /data /models /encoders" in jobs
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var/"} <= set(ignored)
