"""deploy/k8s (the kustomize base) and deploy/k8s-overlays/local: valid against the Kubernetes schemas,
offline, and wired together (ports, probes, volumes, settings, the encoder Job, KEDA and the Prometheus
Operator)."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import rankstream.stream.metrics  # noqa: F401 - registers every metric a rankstream process serves
from rankstream.stream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "deploy" / "k8s"
LOCAL = ROOT / "deploy" / "k8s-overlays" / "local"
# The oldest Kubernetes the manifests are meant for; every API they use is GA there.
K8S_VERSION = "1.30"
# Custom resources: no built-in schema, so their required fields are checked by the tests below.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor"}
PARTITIONS_ANNOTATION = "rankstream.io/topic-partitions"

Manifest = dict[str, Any]


def _base_manifests() -> list[Manifest]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for name in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]
    return docs


def _render(overlay: Path) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: rendering the overlay needs `kubectl kustomize` (any recent kubectl)")
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return _base_manifests()


@pytest.fixture(scope="module")
def local() -> list[Manifest]:
    return _render(LOCAL)


def _one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _scorer(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment", "rankstream-scorer")


def _container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _env_sources(container: Manifest) -> dict[str, str]:
    """envFrom as {"configMapRef": name, "secretRef": name}."""
    return {kind: ref["name"] for source in container["envFrom"] for kind, ref in source.items()}


def _config(docs: list[Manifest]) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", "rankstream-scorer")["data"])


def _check_builtin_schemas(docs: list[Manifest]) -> None:
    """Every manifest of a built-in kind against its strict schema; the rest must be the known custom kinds."""
    failures = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc}")
    assert not failures, "\n".join(failures)


def _check_scaled_object(docs: list[Manifest]) -> None:
    """KEDA's ScaledObject: what the operator requires, and what makes sense for a consumer group."""
    so = _one(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == _scorer(docs)["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    partitions = int(so["metadata"]["annotations"][PARTITIONS_ANNOTATION])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, (
        "maxReplicaCount must not exceed the topic's partition count: extra replicas would own no partition"
    )
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    config = _config(docs)
    assert meta["bootstrapServers"] == config["RANKSTREAM_KAFKA_BOOTSTRAP"]
    assert meta["consumerGroup"] == config["RANKSTREAM_GROUP_ID"]
    assert meta["topic"] == config["RANKSTREAM_TOPIC"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false"
    assert meta["offsetResetPolicy"] == "earliest"  # as the scorer's consumer
    sasl = config.get("RANKSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").startswith("SASL")
    assert (meta["sasl"] != "none") == sasl, "the lag reader authenticates exactly when the scorers do"
    if "authenticationRef" in trigger:
        auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        refs = auth["spec"]["secretTargetRef"]
        assert {r["parameter"] for r in refs} == {"username", "password"}
        for ref in refs:
            assert ref["key"] in _one(docs, "Secret", ref["name"])["stringData"]
    else:
        assert not sasl, "a SASL Kafka needs the trigger's authenticationRef"


def _scorer_monitor(docs: list[Manifest]) -> Manifest:
    return _one(docs, "PodMonitor", "rankstream-scorer")


def _check_pod_monitor(docs: list[Manifest]) -> None:
    pm = _scorer_monitor(docs)
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    deployment = _scorer(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert ports[endpoint["port"]] == int(_config(docs)["RANKSTREAM_METRICS_PORT"]) == 9100
    assert endpoint["path"] == "/metrics"
    # Every scorer series, as the dashboard and the alert rules read them.
    assert "metricRelabelings" not in endpoint


def _selects(monitor: Manifest, deployment: Manifest) -> bool:
    return bool(monitor["spec"]["selector"]["matchLabels"].items() <= _pod_labels(deployment).items())


def _pod_labels(deployment: Manifest) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _kept(endpoint: Manifest, name: str) -> bool:
    """Whether the endpoint's metricRelabelings keep a series of this metric name (keep/drop on __name__,
    the only rules used here; Prometheus anchors the regex at both ends)."""
    for rule in endpoint.get("metricRelabelings", []):
        assert rule["sourceLabels"] == ["__name__"] and rule["action"] in ("keep", "drop"), rule
        if bool(re.fullmatch(rule["regex"], name)) != (rule["action"] == "keep"):
            return False
    return True


def _served_series() -> set[str]:
    """The rankstream_* series a rankstream process serves on /metrics: every metric of stream/metrics.py
    is registered in any of them (scorer, tables job, catalog job)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("rankstream_")
        for suffix in suffixes[family.type]
    }


def _check_pod_monitors_cover_metrics_ports(docs: list[Manifest]) -> None:
    """Every Deployment with a `metrics` port is scraped, once, by a PodMonitor on that port, and every
    PodMonitor scrapes some Deployment's pods: a component added later cannot be left unscraped."""
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert all(m["apiVersion"] == "monitoring.coreos.com/v1" for m in monitors)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    with_port = [d for d in deployments if any(p["name"] == "metrics" for p in _container(d).get("ports", []))]
    assert {d["metadata"]["name"] for d in with_port} >= {f"rankstream-{c}" for c in ("scorer", "tables", "catalog")}
    config_port = int(_config(docs)["RANKSTREAM_METRICS_PORT"])
    for deployment in with_port:
        ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
        assert ports["metrics"] == config_port, deployment["metadata"]["name"]
        scraping = [m for m in monitors if _selects(m, deployment)]
        # Two PodMonitors on one pod would scrape it twice: every sum over its series would double.
        assert len(scraping) == 1, f"{deployment['metadata']['name']}: {len(scraping)} PodMonitors select its pods"
        [endpoint] = scraping[0]["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    for monitor in monitors:
        assert any(_selects(monitor, d) for d in with_port), f"PodMonitor {monitor['metadata']['name']} selects nothing"


def _check_scorer_series_come_from_scorers(docs: list[Manifest]) -> None:
    """The tables and catalog processes serve the scorer's series too (at zero: rankstream_ready 0, ...),
    which would fire RankstreamReplicaNotReady and count as scorers on the dashboard: their PodMonitors
    keep only the component's own rankstream_<component>_* series."""
    served = _served_series()
    scorer_monitor = _scorer_monitor(docs)
    for monitor in [d for d in docs if d["kind"] == "PodMonitor" and d is not scorer_monitor]:
        component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        own = {name for name in served if name.startswith(f"rankstream_{component}_")}
        assert own, f"no rankstream_{component}_* metric in stream/metrics.py"
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert {name for name in served if _kept(endpoint, name)} == own, monitor["metadata"]["name"]
        assert _kept(endpoint, "process_resident_memory_bytes")


def _check_scorer(docs: list[Manifest]) -> None:
    deployment = _scorer(docs)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["terminationGracePeriodSeconds"] >= 30  # a batch's drain, write and commit
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert {probe["port"] for probe in probes.values()} == {"metrics"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    sources = _env_sources(container)
    assert _one(docs, "ConfigMap", sources["configMapRef"])
    assert _one(docs, "Secret", sources["secretRef"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _tables(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment", "rankstream-tables")


def _check_tables(docs: list[Manifest]) -> None:
    """The live-tables job: `rankstream tables` with the scorers' ConfigMap and Secret, in its own group."""
    deployment = _tables(docs)
    container = _container(deployment)
    # The image's ENTRYPOINT is `rankstream serve`; `command` replaces it (`args` alone would extend it).
    assert container["command"] == ["rankstream", "tables"] and "args" not in container
    assert container["image"] == _container(_scorer(docs))["image"]
    sources = _env_sources(container)
    assert sources == _env_sources(_container(_scorer(docs)))
    assert _one(docs, "ConfigMap", sources["configMapRef"]) and _one(docs, "Secret", sources["secretRef"])
    assert not any(e["name"].startswith(("RANKSTREAM_KAFKA", "RANKSTREAM_REDIS")) for e in container.get("env", []))
    config = _config(docs)
    assert config.get("RANKSTREAM_TABLES_GROUP_ID", "rankstream-tables") != config["RANKSTREAM_GROUP_ID"], (
        "the tables job in the scorers' group would take their partitions"
    )
    # Its metrics port is the one the ConfigMap tells the job to serve (tables-podmonitor.yaml scrapes it).
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(config["RANKSTREAM_METRICS_PORT"])}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    # Its pods are not the scorers': their selector, PDB and PodMonitor leave the tables pods out, and back.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    scorer_labels = _scorer(docs)["spec"]["template"]["metadata"]["labels"]
    for selector in (
        _scorer(docs)["spec"]["selector"]["matchLabels"],
        _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _scorer_monitor(docs)["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= scorer_labels.items()


def _catalog(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment", "rankstream-catalog")


def _check_catalog(docs: list[Manifest]) -> None:
    """The catalog job: `rankstream catalog serve` with the scorers' ConfigMap and Secret, in its own group,
    probed like the scorer, its encoder read-only from a volume of its own."""
    deployment = _catalog(docs)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    # The image's ENTRYPOINT is `rankstream serve`; `command` replaces it (`args` alone would extend it).
    assert container["command"] == ["rankstream", "catalog", "serve"] and "args" not in container
    assert container["image"] == _container(_scorer(docs))["image"]
    sources = _env_sources(container)
    assert sources == _env_sources(_container(_scorer(docs)))
    assert _one(docs, "ConfigMap", sources["configMapRef"]) and _one(docs, "Secret", sources["secretRef"])
    own = {e["name"]: e.get("value") for e in container["env"]}
    assert not any(k.startswith(("RANKSTREAM_KAFKA", "RANKSTREAM_REDIS")) for k in own)  # one place for those
    config = _config(docs)
    groups = (config["RANKSTREAM_GROUP_ID"], config.get("RANKSTREAM_TABLES_GROUP_ID", "rankstream-tables"))
    assert config.get("RANKSTREAM_CATALOG_GROUP_ID", "rankstream-catalog") not in groups, (
        "the catalog job in another job's group would take its partitions"
    )
    # The encoder's ONNX Runtime threads within the CPU limit (the job runs no other session).
    default = Settings.model_fields["encoder_threads"].default
    threads = own.get("RANKSTREAM_ENCODER_THREADS", config.get("RANKSTREAM_ENCODER_THREADS", default))
    assert int(threads) <= int(container["resources"]["limits"]["cpu"])
    # The scorer's probes: /healthz and /readyz on the metrics port the ConfigMap tells the job to serve.
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {ports[probe["port"]] for probe in probes.values()} == {int(config["RANKSTREAM_METRICS_PORT"])}
    assert pod["terminationGracePeriodSeconds"] >= 30  # a batch's embedding, write and commit
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    # RANKSTREAM_ENCODER_DIR lies on a read-only mount of a claim of its own, not the model registry.
    mounts = _mounts(pod, container)
    [(mount, claim)] = [(m, c) for m, c in mounts.items() if own["RANKSTREAM_ENCODER_DIR"].startswith(m + "/")]
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["mountPath"] == mount)
    scorer = _scorer(docs)
    assert claim != _mounts(scorer["spec"]["template"]["spec"], _container(scorer))[config["RANKSTREAM_MODEL_DIR"]]
    assert "ReadWriteMany" in _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    # Its pods are nobody else's: the scorer's and tables' selectors, PDB and PodMonitor leave them out.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        _scorer(docs)["spec"]["selector"]["matchLabels"],
        _tables(docs)["spec"]["selector"]["matchLabels"],
        _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _scorer_monitor(docs)["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()
    own_selector = deployment["spec"]["selector"]["matchLabels"]
    assert own_selector.items() <= labels.items()
    for other in (scorer, _tables(docs)):
        assert not own_selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


def _mounts(pod: Manifest, container: Manifest) -> dict[str, str]:
    """mount path -> claim name, for the container's PVC mounts."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    return {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"] if m["name"] in claims}


def _check_model_volume(docs: list[Manifest]) -> None:
    """Scorers and the recompress job share one ReadWriteMany registry at RANKSTREAM_MODEL_DIR."""
    model_dir = _config(docs)["RANKSTREAM_MODEL_DIR"]
    deployment = _scorer(docs)
    claim = _mounts(deployment["spec"]["template"]["spec"], _container(deployment))[model_dir]
    assert _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _one(docs, "CronJob", "rankstream-recompress")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [recompress] = job["containers"]
    assert _mounts(job, recompress)[model_dir] == claim
    for name in set(_mounts(job, recompress).values()):
        assert _one(docs, "PersistentVolumeClaim", name)["spec"]["accessModes"] == ["ReadWriteMany"]


def _k8s_expand(text: str, env: dict[str, str]) -> str:
    """What Kubernetes makes of a command: `$(NAME)` of a variable set in the container becomes its value,
    `$$` becomes `$`; anything else is left as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([^)]*)\)", one, text)


def _check_encoder_job(docs: list[Manifest]) -> None:
    """The encoder Job installs the catalog job's encoder: the jobs image, the encoders claim writable at
    the folder RANKSTREAM_ENCODER_DIR lies in, the student copied beside it and renamed into place."""
    job = _one(docs, "Job", "rankstream-encoder")["spec"]
    assert isinstance(job["backoffLimit"], int) and 0 <= job["backoffLimit"] <= 3
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    [container] = pod["containers"]
    recompress = _one(docs, "CronJob", "rankstream-recompress")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert container["image"] == recompress["containers"][0]["image"]  # the jobs image
    assert container["image"].split("/")[-1].split(":")[0] == "rankstream-jobs"
    # It reads files and writes files: no Kafka, Redis or credentials.
    assert "envFrom" not in container
    own = {e["name"]: e["value"] for e in container["env"]}
    # The encoders claim, writable, at the folder the catalog Deployment's RANKSTREAM_ENCODER_DIR lies in.
    catalog = _catalog(docs)
    encoder_dir = {e["name"]: e.get("value") for e in _container(catalog)["env"]}["RANKSTREAM_ENCODER_DIR"]
    parent = encoder_dir.rsplit("/", 1)[0]
    mounts = _mounts(pod, container)
    claim = _mounts(catalog["spec"]["template"]["spec"], _container(catalog))[parent]
    assert mounts[parent] == claim
    assert not any(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] == parent)
    assert not any(v["persistentVolumeClaim"].get("readOnly") for v in pod["volumes"] if "persistentVolumeClaim" in v)
    # The Job writes while catalog pods on other nodes read.
    assert "ReadWriteMany" in _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    # Prepared data where the recompress job finds it: data/ in RANKSTREAM_HOME, on the same claim.
    recompress_env = {e["name"]: e["value"] for e in recompress["containers"][0]["env"]}
    home = own["RANKSTREAM_HOME"]
    assert mounts[home] == _mounts(recompress, recompress["containers"][0])[recompress_env["RANKSTREAM_HOME"]]
    # The script, as the shell receives it.
    assert container["command"][:2] == ["sh", "-ec"] and "args" not in container
    lines = [line.strip() for line in _k8s_expand(container["command"][2], own).splitlines() if line.strip()]
    [at] = [i for i, line in enumerate(lines) if line.startswith("rankstream embed ")]
    embed = shlex.split(lines[at])
    flags = dict(zip(embed[2::2], embed[3::2], strict=True))
    assert flags["--data"] == f"{home}/data" and flags["--out"].startswith(home + "/")
    assert int(flags["--steps"]) > 0 and int(flags["--student-steps"]) > 0
    # Skipped once installed; the artifact the report names copied to .current, then renamed into place.
    staging = f"{parent}/.current"
    assert lines[0].startswith(f"if [ -f {encoder_dir}/manifest.json ]; then") and lines[0].endswith("exit 0; fi")
    report = lines[at + 1]
    assert report.startswith("artifact=$(") and f"{flags['--out']}/report.json" in report and '["artifact"]' in report
    copy = lines.index(f'cp -r "$artifact" {staging}')
    assert f"rm -rf {staging}" in lines[at:copy]
    assert lines[-1] == f"mv {staging} {encoder_dir}"


def _check_settings(docs: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap and the Secret together make a valid scorer configuration."""
    sources = _env_sources(_container(_scorer(docs)))
    env = {**_config(docs), **(_one(docs, "Secret", sources["secretRef"]).get("stringData") or {})}
    assert all(name.startswith("RANKSTREAM_") for name in env)
    for name in [n for n in os.environ if n.startswith("RANKSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(replica="pod-name")  # the Deployment sets it from the pod's name
    assert settings.metrics_port == 9100
    # The catalog job's own variables on top make a valid configuration too.
    for e in _container(_catalog(docs))["env"]:
        monkeypatch.setenv(e["name"], e["value"])
    catalog = load_settings()
    assert catalog.encoder_dir is not None and catalog.catalog_group_id != catalog.group_id


CHECKS = [
    _check_scaled_object,
    _check_pod_monitor,
    _check_pod_monitors_cover_metrics_ports,
    _check_scorer_series_come_from_scorers,
    _check_scorer,
    _check_tables,
    _check_catalog,
    _check_model_volume,
    _check_encoder_job,
]


def test_base_lists_every_manifest_beside_it() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


def test_base_validates_against_the_kubernetes_schemas(base: list[Manifest]) -> None:
    _check_builtin_schemas(base)
    assert {d["kind"] for d in base} >= {"Deployment", "PodDisruptionBudget", "CronJob", "Job", "Secret"} | CUSTOM_KINDS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("_check_"))
def test_base_is_wired(base: list[Manifest], check: Any) -> None:
    check(base)


def test_base_settings_load(base: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    _check_settings(base, monkeypatch)


def test_base_secret_holds_placeholders_only(base: list[Manifest]) -> None:
    secret = _one(base, "Secret", "rankstream-credentials")
    assert set(secret["stringData"]) == {
        "RANKSTREAM_REDIS_PASSWORD",
        "RANKSTREAM_KAFKA_SASL_USERNAME",
        "RANKSTREAM_KAFKA_SASL_PASSWORD",
    }
    assert all("fake" in value for value in secret["stringData"].values())


def test_local_overlay_renders_and_validates(local: list[Manifest]) -> None:
    _check_builtin_schemas(local)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("_check_"))
def test_local_overlay_is_wired(local: list[Manifest], check: Any) -> None:
    check(local)


def test_local_overlay_settings_load(local: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    _check_settings(local, monkeypatch)


@pytest.mark.parametrize("which", ["base", "local"])
def test_the_scorers_model_calls_fit_its_cpu(which: str, request: pytest.FixtureRequest) -> None:
    """Lanes x ONNX Runtime threads per call: the cores the scorer's model may take, equal to its CPU request
    and within its limit (more would queue threads on cores the pod does not have)."""
    docs: list[Manifest] = request.getfixturevalue(which)
    config, resources = _config(docs), _container(_scorer(docs))["resources"]
    fields = Settings.model_fields
    threads = int(config.get("RANKSTREAM_THREADS", fields["threads"].default))
    lanes = int(config.get("RANKSTREAM_SCORE_LANES", fields["score_lanes"].default))
    assert threads * lanes == float(resources["limits"]["cpu"]) >= _cores(resources["requests"]["cpu"])


def _cores(cpu: str) -> float:
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def test_local_overlay_is_one_small_replica_from_a_local_registry(local: list[Manifest]) -> None:
    for doc in local:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "rankstream", doc["metadata"]["name"]
    deployment = _scorer(local)
    assert deployment["spec"]["replicas"] == 1
    assert _one(local, "ScaledObject")["spec"]["maxReplicaCount"] == 1
    assert _container(deployment)["resources"]["limits"]["cpu"] == "1"
    assert _tables(local)["spec"]["replicas"] == 1
    assert _catalog(local)["spec"]["replicas"] == 1
    job = _one(local, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    images = [_container(d)["image"] for d in (deployment, _tables(local), _catalog(local))]
    images += [c["image"] for c in job["containers"]]
    images += [c["image"] for c in _one(local, "Job")["spec"]["template"]["spec"]["containers"]]
    assert all(image.startswith("localhost:5000/") for image in images), images


def test_base_runs_two_tables_and_two_catalog_replicas(base: list[Manifest]) -> None:
    # Fixed, not scaled: a lost replica's partitions move to the other at once.
    assert _tables(base)["spec"]["replicas"] == 2
    assert _catalog(base)["spec"]["replicas"] == 2


def test_recompress_reads_the_scorers_settings_and_credentials(base: list[Manifest]) -> None:
    cron = _one(base, "CronJob", "rankstream-recompress")
    job = dict(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert _env_sources(job) == _env_sources(_container(_scorer(base)))
    own = {e["name"]: e.get("value") for e in job["env"]}
    assert own["RANKSTREAM_MODEL_DIR"] == _config(base)["RANKSTREAM_MODEL_DIR"]
    assert not any(k.startswith(("RANKSTREAM_KAFKA", "RANKSTREAM_REDIS")) for k in own)  # one place for those
