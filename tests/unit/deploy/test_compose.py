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
    assert {"kafka", "redis", "prepare", "model-builder", "scorer", "tables"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"] == "redis:7"
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["redis"]
    assert _env(services["kafka"])["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for served in ("scorer", "tables"):
        assert services[served]["build"]["dockerfile"] == "deploy/docker/Dockerfile.scorer"
    for job in ("prepare", "model-builder"):
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
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var/"} <= set(ignored)
