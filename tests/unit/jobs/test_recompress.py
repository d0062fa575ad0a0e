"""`rankstream recompress`: window selection, the hold-out gate, the schedule, and whole tiny cycles
(random-weight tiny BERTs; an in-memory stand-in for Redis, so no service is needed)."""

import asyncio
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rankstream.compression.gate import accuracy_gate
from rankstream.data.prepare import Prepared
from rankstream.jobs.cycle_record import CycleRecord
from rankstream.jobs.presets import compress_preset, recompress_tiny
from rankstream.jobs.recompress import CompressRun, Paths, recompress_cycle
from rankstream.jobs.runs import VariantRecord
from rankstream.jobs.schedule import parse_duration, run_every
from rankstream.jobs.window import split_holdout, window_from_events, window_from_files
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import ClickEvent
from rankstream.stream.registry import ANNOUNCE_CHANNEL, Registry
from tests.model_builders import (
    stand_in_artifact,
    tiny_compress_run,
    tiny_prepared,
    tiny_signal_compress_run,
    variant,
    write_run,
)


class FakeRedis:
    """The few commands Registry uses, in memory (decode_responses=True semantics: str in, str out)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.published: list[tuple[str, str]] = []

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def set(self, key: str, value: str) -> None:
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def lpush(self, key: str, value: str) -> None:
        self.lists.setdefault(key, []).insert(0, value)

    async def ltrim(self, key: str, start: int, stop: int) -> None:
        self.lists[key] = self.lists.get(key, [])[start : stop + 1]

    async def lrange(self, key: str, start: int, stop: int) -> list[str]:
        return self.lists.get(key, [])[start : stop + 1]

    async def publish(self, channel: str, message: str) -> None:
        self.published.append((channel, message))

    def pipeline(self, transaction: bool = True) -> "_Pipeline":
        return _Pipeline(self)


class _Pipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    async def __aenter__(self) -> "_Pipeline":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.ops.append((name, args))

    async def execute(self) -> list[Any]:
        return [await getattr(self.redis, name)(*args) for name, args in self.ops]


# -- tiny inputs, built once per module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recompress")
    return tiny_prepared(root), tiny_compress_run(root / "compress" / "tiny")


# -- window, hold-out, gate, schedule -------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("30m") == 1800
    assert parse_duration("6h") == 6 * 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86400
    for bad in ("6x", "", "h", "0m", "6 hours"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_window_from_files_ends_at_the_newest_event(tiny: tuple[Path, Path]) -> None:
    prepared = Prepared.load(tiny[0])
    window = window_from_files(prepared, since=None, days=7)
    newest = prepared.interactions["ts"].max()
    assert window.end == newest.to_pydatetime() and window.start == window.end - timedelta(days=7)
    assert len(window.events) > 0 and (window.events["ts"] >= newest - pd.Timedelta(days=7)).all()
    assert len(window.events) < len(prepared.interactions) == len(window.history)
    since = datetime(2024, 2, 1, tzinfo=UTC)
    by_since = window_from_files(prepared, since=since, days=None)
    assert by_since.start == since and by_since.events["ts"].min() >= pd.Timestamp(since)


def test_window_from_kafka_events_counts_replayed_clicks_once(tiny: tuple[Path, Path]) -> None:
    prepared = Prepared.load(tiny[0])
    old = prepared.interactions.tail(5)
    replayed = [
        ClickEvent(user_id=u, item_id=i, ts=t.to_pydatetime())
        for u, i, t in zip(old.user_id, old.item_id, old.ts, strict=True)
    ]
    new = ClickEvent(user_id="u1", item_id="i3", ts=datetime(2024, 3, 1, tzinfo=UTC))
    start, end = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
    window = window_from_events(prepared, [*replayed, new], start=start, end=end, source="kafka:clicks")
    assert len(window.events) == 6
    assert len(window.history) == len(prepared.interactions) + 1


def test_holdout_is_the_newest_share_of_baskets() -> None:
    @dataclass(frozen=True)
    class Inst:
        ts: datetime

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    instances = [Inst(t0 + timedelta(hours=h)) for h in range(10)]
    train, held = split_holdout(instances, 0.2)  # type: ignore[arg-type]
    assert len(held) == 2 and len(train) == 8
    assert max(i.ts for i in train) < min(i.ts for i in held)
    with pytest.raises(ConfigError, match="widen"):
        split_holdout(instances[:1], 0.2)  # type: ignore[arg-type]


def holdout_gate(ndcg: float, active_ndcg: float, *, tolerance: float):  # type: ignore[no-untyped-def]
    return accuracy_gate(ndcg, active_ndcg, tolerance=tolerance, kind="absolute", reference="active")


def test_gate_is_absolute_and_a_negative_tolerance_demands_a_gain() -> None:
    assert holdout_gate(0.195, 0.200, tolerance=0.01).passed
    refused = holdout_gate(0.185, 0.200, tolerance=0.01)
    assert not refused.passed and "< floor 0.1900" in refused.reason
    assert not holdout_gate(0.205, 0.200, tolerance=-0.01).passed
    assert holdout_gate(0.215, 0.200, tolerance=-0.01).passed
    assert not holdout_gate(float("nan"), 0.2, tolerance=0.01).passed


def test_compress_run_warm_starts_from_the_fastest_student_that_passed_its_gate(tmp_path: Path) -> None:
    variants: dict[str, VariantRecord] = {}
    for key, passed, speed in (
        ("teacher-fp32", True, 10.0),
        ("student-l4-int8", True, 500.0),
        ("student-l2-int8", False, 900.0),
        ("student-l2-ffn50-int8", True, 800.0),
        ("student-l2-ffn50-fp32", True, 600.0),
    ):
        art = stand_in_artifact(tmp_path / key, f"c1-{key}", ["x"])
        role = "teacher" if key.startswith("teacher") else "student"
        variants[key] = variant(art, tmp_path / "hf" / key, role=role, passed=passed, speed=speed)
    write_run(tmp_path, variants)
    run = CompressRun.load(tmp_path)
    assert (
        run.best.version == "c1-student-l2-ffn50-int8" and run.best.hf_dir == tmp_path / "hf" / "student-l2-ffn50-int8"
    )
    assert run.teacher_version == "c1-teacher-fp32" and "c1-student-l4-int8" in run.students
    with pytest.raises(ConfigError, match="rankstream compress"):
        CompressRun.load(tmp_path / "nothing")


async def test_a_failed_cycle_is_logged_and_the_schedule_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}
    ok = object()

    async def cycle() -> CycleRecord:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Kafka is down")
        return ok  # type: ignore[return-value]

    results = await asyncio.wait_for(run_every(0.01, cycle, cycles=3), 5)
    assert results == [None, ok, ok]
    assert "recompress cycle 1 failed" in caplog.text and "Kafka is down" in caplog.text


def test_cli_parses_recompress() -> None:
    from rankstream.cli.main import build_parser

    args = build_parser().parse_args(["recompress", "--every", "6h", "--days", "7", "--tolerance", "0.02"])
    assert args.every == "6h" and args.days == 7 and args.tolerance == 0.02 and not args.from_kafka
    with pytest.raises(SystemExit):
        build_parser().parse_args(["recompress", "--days", "7", "--since", "2011-11-01"])


# -- whole cycles ------------------------------------------------------------------------------------------


def _paths(tiny: tuple[Path, Path], tmp_path: Path) -> Paths:
    return Paths(data=tiny[0], compress_run=tiny[1], registry=tmp_path / "models", work=tmp_path / "work")


@pytest.mark.slow
async def test_a_refused_cycle_publishes_nothing(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models", FakeRedis())  # type: ignore[arg-type]
    # A negative tolerance demands a gain of a full NDCG point: a tiny random model cannot make that.
    config = replace(recompress_tiny(), tolerance=-1.0)
    result = await recompress_cycle(registry, _paths(tiny, tmp_path), config)
    assert not result.gate.passed and not result.published
    assert registry.versions() == [] and await registry.active() is None
    assert result.reference == "c-tiny-student-l2-int8"  # nothing active: judged against the compress student
    record = CycleRecord.load(tmp_path / "work" / result.version)
    assert record.published is False and record.gate.passed is False
    assert "REFUSED by the gate, nothing published" in result.format()


@pytest.mark.slow
async def test_a_passing_cycle_publishes_and_the_next_warm_starts_from_it(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    redis = FakeRedis()
    registry = Registry(tmp_path / "models", redis)  # type: ignore[arg-type]
    run = CompressRun.load(tiny[1])
    first_active, _ = await registry.publish(run.best_artifact)
    config = replace(recompress_tiny(), tolerance=1.0)

    result = await recompress_cycle(registry, _paths(tiny, tmp_path), config)
    assert result.gate.passed and result.published and result.activated
    assert await registry.active() == result.version and result.version.startswith("r")
    assert result.reference == first_active and result.warm_start == first_active
    manifest = registry.verify(result.version)
    assert manifest.parent == first_active
    assert manifest.metrics["holdout_ndcg@10"] == pytest.approx(result.new["ndcg@10"])
    assert "quantize:int8-dynamic-per-channel-7bit" in manifest.method_chain
    # Re-distilled and exported at the length the compress run trained at, not a default.
    assert manifest.input_spec.max_length == run.max_length == compress_preset("tiny").max_length != 64
    assert any(
        s.startswith("recompress:distil:listwise-kl:teacher=c-tiny-teacher-fp32:window:") for s in manifest.method_chain
    )
    assert (ANNOUNCE_CHANNEL, result.version) in redis.published
    assert "published and activated" in result.format() and "gate      pass" in result.format()
    c = result.counts
    assert c["train_instances"] > c["held_out_instances"] > 0 and c["distil_lists"] <= 8
    # Open states train beside the baskets; the held-out share is whole baskets only.
    assert 0 < c["train_open_states"] < c["train_instances"]
    assert c["held_out_instances"] == math.ceil(c["instances"] * config.holdout)

    await asyncio.sleep(1.1)  # versions are named by the second
    second = await recompress_cycle(registry, _paths(tiny, tmp_path), config)
    assert second.warm_start == result.version and second.reference == result.version
    assert registry.verify(second.version).parent == result.version
    # The chain does not grow with every cycle.
    assert len(registry.verify(second.version).method_chain) == len(manifest.method_chain)


@pytest.mark.slow
async def test_a_cycle_from_a_signal_teacher_keeps_the_signals(
    tiny: tuple[Path, Path], signal_bert_dir: Path, tmp_path: Path
) -> None:
    from rankstream.stream.signals import SIGNALS

    run_root = tiny_signal_compress_run(tmp_path / "compress", signal_bert_dir)
    registry = Registry(tmp_path / "models", FakeRedis())  # type: ignore[arg-type]
    paths = Paths(data=tiny[0], compress_run=run_root, registry=tmp_path / "models", work=tmp_path / "work")
    result = await recompress_cycle(registry, paths, replace(recompress_tiny(), tolerance=1.0))
    assert result.published
    spec = registry.verify(result.version).input_spec
    assert spec.signals == SIGNALS.version and "signals" in spec.inputs


def test_compose_and_kubernetes_run_recompression() -> None:
    import yaml

    root = Path(__file__).resolve().parents[3]
    service = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]["recompress"]
    assert "rankstream recompress --every" in service["command"][-1] and service["profiles"] == ["recompress"]
    assert "models:/models" in service["volumes"] and service["environment"]["RANKSTREAM_MODEL_DIR"] == "/models"
    cron = yaml.safe_load((root / "deploy/k8s/recompress-cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["rankstream", "recompress"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RANKSTREAM_MODEL_DIR"] == "/models"
    # Kafka and Redis come from the scorers' ConfigMap, where RANKSTREAM_REDIS_URL and _KAFKA_BOOTSTRAP live.
    config = yaml.safe_load((root / "deploy/k8s/scorer-config.yaml").read_text())
    sources = {ref["name"] for source in container["envFrom"] for ref in source.values()}
    assert config["metadata"]["name"] in sources
    assert {"RANKSTREAM_REDIS_URL", "RANKSTREAM_KAFKA_BOOTSTRAP"} <= set(config["data"])
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/models", "/state"}
