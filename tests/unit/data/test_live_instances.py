"""Training and evaluation read the live tables as the scorer does: each basket sees every earlier event,
and nothing at or after its own time."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rankstream.data.live_instances import live_instances
from rankstream.data.live_replay import LiveReplay, replay_events
from rankstream.data.prepare import Prepared
from rankstream.stream import batch as b
from rankstream.stream.candidates import covisit_candidates, in_catalog
from rankstream.stream.events import ClickEvent
from rankstream.stream.live import LiveParams
from tests.model_builders import tiny_prepared

TITLES = {i: f"{i} item" for i in "abcdef"}


def _frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "ts": pd.to_datetime([t for _, _, t in rows], utc=True).astype("datetime64[us, UTC]"),
        }
    )


# u1 and u2 make a's neighbours; then u1 and u3 buy at the same minute; u2 comes back the day after.
ROWS = [
    ("u1", "a", "2024-01-01T10:00:00Z"),
    ("u1", "b", "2024-01-01T10:00:00Z"),
    ("u2", "a", "2024-01-02T10:00:00Z"),
    ("u2", "c", "2024-01-02T10:00:00Z"),
    ("u1", "c", "2024-01-03T10:00:00Z"),
    ("u1", "d", "2024-01-03T10:00:00Z"),
    ("u3", "a", "2024-01-03T10:00:00Z"),
    ("u3", "d", "2024-01-03T10:00:00Z"),
    ("u2", "d", "2024-01-04T10:00:00Z"),
    ("u2", "e", "2024-01-04T10:00:00Z"),
]


def _at_ms(inst_ts: datetime) -> int:
    return int(pd.Timestamp(inst_ts).value // 1_000_000)


def _replay_until(frame: pd.DataFrame, at_ms: int, *, inclusive: bool = False) -> LiveReplay:
    rp = LiveReplay(LiveParams(), 4)
    rp.apply_all(e for e in replay_events(frame) if e[2] < at_ms or (inclusive and e[2] == at_ms))
    return rp


def test_candidates_are_covisit_candidates_of_the_tables_just_before_the_basket() -> None:
    frame = _frame(ROWS)
    split = frame[frame["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")]
    live = live_instances(frame, split, TITLES)
    assert [(i.user_id, i.positives) for i in live.instances] == [
        ("u1", frozenset({"c", "d"})),
        ("u2", frozenset({"d", "e"})),
    ]
    assert live.eligible == 2 and live.baskets == 3  # u3's basket has no history
    for inst in live.instances:
        at = _at_ms(inst.ts)
        before = _replay_until(frame, at)
        want = covisit_candidates(inst.history, before.neighbours(inst.history[:5]), before.trending(), 50)
        assert list(inst.candidates) == want
        after = _replay_until(frame, at, inclusive=True)  # the basket itself (and u3's) applied: not what it sees
        assert list(inst.candidates) != covisit_candidates(
            inst.history, after.neighbours(inst.history[:5]), after.trending(), 50
        )
    # u1 before day 3: a was bought with b, then with c (newer, heavier); d had never sold.
    u1 = live.instances[0]
    assert u1.history == ("b", "a") and u1.candidates[0] == "c" and "d" not in u1.candidates


def test_signals_are_what_the_scorer_computes_from_the_same_state() -> None:
    frame = _frame(ROWS)
    split = frame[frame["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")]
    live = live_instances(frame, split, TITLES)
    assert live.signals is not None
    for inst, rows in zip(live.instances, live.signals, strict=True):
        at = _at_ms(inst.ts)
        state = _replay_until(frame, at)
        event = ClickEvent(user_id=inst.user_id, item_id=inst.history[0], ts=inst.ts)
        plan = b.UserPlan(inst.user_id, inst.history, b.Valid(0, 0, at, event), events=1)
        cands = in_catalog(inst.candidates, TITLES)
        items = b.signal_items([cands])
        neighbours = state.neighbours([*b.recent_items([plan]), *items])
        want = b.user_signals(plan, cands, neighbours, state.counts(items), TITLES)
        np.testing.assert_array_equal(rows, want)
    # The statistics are taken at the basket: for u2 on day 4, d sold once (day 3, two buyers' baskets).
    u2 = live.instances[1]
    d = list(in_catalog(u2.candidates, TITLES)).index("d")
    assert live.signals[1][d, 5] == pytest.approx(np.log1p(2))  # pop7_log


def test_a_sample_sees_the_same_tables_as_the_full_walk() -> None:
    frame = _frame(ROWS)
    split = frame[frame["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")]
    full = live_instances(frame, split, TITLES)
    one = live_instances(frame, split, TITLES, max_instances=1, seed=1)
    assert one.eligible == 2 and len(one.instances) == 1
    k = full.instances.index(one.instances[0])
    assert one.signals is not None and full.signals is not None
    np.testing.assert_array_equal(one.signals[0], full.signals[k])
    assert live_instances(frame, split, TITLES, with_signals=False).signals is None


def test_open_states_read_the_tables_before_their_basket_and_are_told_apart() -> None:
    frame = _frame(ROWS)
    split = frame[frame["ts"] >= pd.Timestamp("2024-01-03", tz="UTC")]
    plain = live_instances(frame, split, TITLES)
    live = live_instances(frame, split, TITLES, open_baskets=1)
    assert [i for i, o in zip(live.instances, live.opened, strict=True) if not o] == plain.instances
    assert plain.opened == [False, False] and live.eligible == 5  # each two-line basket opens once, u3's too
    opened = [i for i, o in zip(live.instances, live.opened, strict=True) if o]
    assert {(i.user_id, i.history[0], i.positives) for i in opened} == {
        ("u1", "c", frozenset({"d"})),
        ("u3", "a", frozenset({"d"})),
        ("u2", "d", frozenset({"e"})),
    }
    for inst in opened:  # the basket's first line is on screen, the tables still those just before it
        before = _replay_until(frame, _at_ms(inst.ts))
        want = covisit_candidates(inst.history, before.neighbours(inst.history[:5]), before.trending(), 50)
        assert list(inst.candidates) == want


def test_training_windows_read_the_live_tables_just_before_each_basket() -> None:
    from rankstream.data.windows import training_windows

    rows = []
    for day in range(1, 29):  # a and b bought together all month; c and d only in the last week
        rows += [(f"u{day}", "a", f"2024-01-{day:02d}T10:00:00Z"), (f"u{day}", "b", f"2024-01-{day:02d}T10:00:00Z")]
    for day in range(22, 29):
        rows += [(f"v{day}", "a", f"2024-01-{day:02d}T11:00:00Z"), (f"v{day}", "c", f"2024-01-{day:02d}T11:00:00Z")]
        rows += [(f"v{day}", "d", f"2024-01-{day + 1:02d}T11:00:00Z")]
    frame = _frame(rows)
    end = datetime(2024, 1, 29, tzinfo=UTC)
    windows = training_windows(frame, end, TITLES, windows=2, days=7)
    assert [w.start.day for w in windows] == [22]  # nobody came back in the first window: skipped
    (last,) = windows
    by_user = {inst.user_id: inst for inst in last.instances}
    assert set(by_user) == {f"v{d}" for d in range(22, 28)}  # v28's d falls on the 29th
    # v22's d (the 23rd) had never sold: it cannot be a candidate. From v23 on, c's neighbour list holds
    # d (v22's next basket), so it comes first; tables frozen before the window never had it.
    assert "d" not in by_user["v22"].candidates
    assert all(by_user[f"v{d}"].candidates[0] == "d" for d in range(23, 28))
    # The windows are the live walk over their baskets, signals included.
    before_end = frame[frame["ts"] < pd.Timestamp(end)]
    live = live_instances(before_end, before_end[before_end["ts"] >= "2024-01-15"], TITLES)
    assert last.instances == live.instances and live.signals is not None
    for got, want in zip(last.signals, live.signals, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return Prepared.load(tiny_prepared(tmp_path_factory.mktemp("live-instances")))


def test_the_evaluation_set_is_the_live_walk(prepared: Prepared) -> None:
    from rankstream.evaluation.evalset import EvalSet

    evalset = EvalSet.build(prepared.out_dir, "valid", max_instances=None)
    live = live_instances(prepared.interactions, prepared.frame("valid"), prepared.catalog)
    assert live.signals is not None and evalset.signals is not None and evalset.instances == len(live.instances)
    rankable = [
        (tuple(in_catalog(i.candidates, prepared.catalog)), rows)
        for i, rows in zip(live.instances, live.signals, strict=True)
        if i.positives.intersection(i.candidates)
    ]
    assert list(evalset.candidates) == [c for c, _ in rankable] and len(rankable) > 0
    for got, (_, want) in zip(evalset.signals, rankable, strict=True):
        np.testing.assert_array_equal(got, want)


def test_training_data_signals_come_from_the_live_walk(prepared: Prepared) -> None:
    from rankstream.jobs.training_data import signal_training_data

    data = signal_training_data(prepared, windows=2, days=7)
    ts = prepared.interactions["ts"]
    end = pd.Timestamp(prepared.split.train_end)
    live = live_instances(
        prepared.interactions[ts < end],
        prepared.interactions[(ts >= end - pd.Timedelta(days=14)) & (ts < end)],
        prepared.catalog,
    )
    assert data.instances == live.instances and live.signals is not None and len(data.instances) > 0
    for got, want in zip(data.signals, live.signals, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_recompress_gate_reads_the_live_walk(prepared: Prepared, tmp_path: Path) -> None:
    from dataclasses import replace

    from rankstream.compression.redistil import StudentSource
    from rankstream.jobs.presets import recompress_tiny
    from rankstream.jobs.recompress import CompressRun, Cycle
    from rankstream.jobs.window import split_holdout, window_from_files
    from rankstream.stream.artifact import InputSpec, Reference, write_manifest
    from rankstream.stream.features import PAIR_FORMAT
    from rankstream.stream.signals import SIGNALS

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.onnx").write_bytes(b"placeholder")
    (teacher / "tokenizer.json").write_text("{}")
    spec = InputSpec(
        pair_format=PAIR_FORMAT,
        signals=SIGNALS.version,
        inputs=("input_ids", "attention_mask", "token_type_ids", "signals"),
    )
    write_manifest(
        teacher,
        version="t",
        parent=None,
        method_chain=[],
        metrics={},
        input_spec=spec,
        reference=Reference(pairs=(), scores=()),
    )
    source = StudentSource("s", tmp_path / "s", ())
    run = CompressRun(tmp_path, teacher, "t", source, teacher, {}, max_length=spec.max_length)
    config = replace(recompress_tiny(), holdout=0.3)
    window = window_from_files(prepared, since=config.since, days=None)
    cycle = Cycle(window, prepared, run, tmp_path / "out", version="r1", config=config)
    groups, evalset = cycle.lists()

    live = live_instances(window.history, window.events, prepared.catalog)
    _, held = split_holdout(live.instances, config.holdout)
    assert live.signals is not None and evalset.signals is not None
    held_rows = live.signals[len(live.instances) - len(held) :]
    want = [rows for inst, rows in zip(held, held_rows, strict=True) if inst.positives.intersection(inst.candidates)]
    assert len(evalset.signals) == len(want) > 0
    for got, w in zip(evalset.signals, want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert groups and all(len(p.signals) == len(SIGNALS.names) for g in groups for p in g)
