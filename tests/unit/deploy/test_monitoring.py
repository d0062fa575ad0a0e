"""deploy/monitoring: the Grafana dashboard and the alert rules read only series the scorer exports,
and Prometheus accepts the rules."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import rankstream.stream.metrics  # noqa: F401 - registers the scorer's metrics in REGISTRY

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts-test.yml"

# The series each metric type puts on /metrics (prometheus_client: a family's name has no _total).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
METRIC = re.compile(r"\brankstream_[a-z0-9_]*[a-z0-9]\b")


def _exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("rankstream_"):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"]]


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_exported_names_follow_the_metric_types() -> None:
    exported = _exported()
    assert {"rankstream_events_total", "rankstream_event_to_redis_seconds_bucket", "rankstream_lag"} <= exported
    assert "rankstream_events" not in exported  # a counter's samples are _total


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_is_exported(source: str) -> None:
    exprs = _dashboard_exprs() if source == "dashboard" else [rule["expr"] for rule in _rules()]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used, f"no rankstream metric found in the {source}"
    assert used <= _exported(), f"not exported by stream/metrics.py: {sorted(used - _exported())}"


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(t["refId"] and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    exprs = " ".join(_dashboard_exprs())
    for needed in (
        "rate(rankstream_events_total",
        "rankstream_lag",
        "histogram_quantile(0.5, sum by (le) (rate(rankstream_event_to_redis_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(rankstream_event_to_redis_seconds_bucket",
        "sum by (reason) (rate(rankstream_dlq_total",
        "rankstream_live_hits_total",
        "rankstream_live_events_total",
        "rankstream_swap_seconds_count",
        "rankstream_models_refused_total",
        "rankstream_ready",
    ):
        assert needed in exprs, needed


def test_alerts_cover_the_failure_modes() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    assert set(rules) == {
        "RankstreamLagGrowing",
        "RankstreamP99OverObjective",
        "RankstreamDLQSpike",
        "RankstreamModelRefused",
        "RankstreamReplicaNotReady",
        "RankstreamTablesFenceMoved",
        "RankstreamTablesSkipping",
    }
    assert "> 0.25" in rules["RankstreamP99OverObjective"]["expr"]  # the 250 ms objective, in seconds
    assert rules["RankstreamReplicaNotReady"]["expr"].strip() == "rankstream_ready == 0"
    assert rules["RankstreamReplicaNotReady"]["for"].endswith("m")
    fence = rules["RankstreamTablesFenceMoved"]
    assert 'rankstream_tables_share_writes_total{outcome="fence_moved"}' in fence["expr"]
    assert fence["for"] == "10m"
    for rule in rules.values():
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule["alert"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package (deploy/setup.sh does)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_tables_alerts_fire_when_they_should() -> None:
    """promtool's rule unit tests: each tables alert fires on its failure and stays silent just short of it."""
    done = _promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {t["alertname"] for case in cases for t in case["alert_rule_test"]}
    assert tested == {"RankstreamTablesFenceMoved", "RankstreamTablesSkipping"}
