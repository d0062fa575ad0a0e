"""`rankstream demo`: the whole stream on real data, from nothing to recommendations a person can read.

stack up -> prepare data -> compress a model (fast preset, once) -> export the text encoder (once) -> fit the
learned merge of co-visitation and text candidates (once; `stream.retrieval`) -> load tables and title vectors
-> start a scorer, a live-tables and a catalog process -> replay the start of the test period (plus a few
malformed events) -> wait for lag 0 -> publish new items on the catalog topic and show them served
(`ops.demo_catalog`) -> wait for the tables to reach the topic's end -> print lists from Redis.

The data is UCI Online Retail with its documented split, or a bring-your-own folder (`--source`) split as
`rankstream prepare --source` splits it; what is replayed is the start of that data's test split.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from rankstream.data.prepare import prepare
from rankstream.data.split import DEFAULT_SPLIT, SplitByDays
from rankstream.deploy import stack
from rankstream.deploy.errors import StackError
from rankstream.evaluation.evaluate import evaluate, format_table
from rankstream.jobs.compress import best_student, compress
from rankstream.jobs.embed import export_pretrained
from rankstream.jobs.merge import MergeRefused, fit_merge
from rankstream.ops.demo_catalog import NewItems, show_new_items
from rankstream.ops.load import describe, load_tables_and_topics, split_events
from rankstream.ops.progress import follow, read_committed
from rankstream.ops.replay import replay
from rankstream.stream.artifact import copy_artifact, load_manifest
from rankstream.stream.encoder import read_encoder_manifest
from rankstream.stream.errors import ConfigError
from rankstream.stream.events import ClickEvent
from rankstream.stream.lag import topic_size
from rankstream.stream.livestore import read_meta, share_keys
from rankstream.stream.recorder import Stats
from rankstream.stream.redis_client import connect_from_settings
from rankstream.stream.retrieval import MergeError, MergeHead
from rankstream.stream.service import resolve_model_dir
from rankstream.stream.settings import Settings, load_settings
from rankstream.stream.store import Store

# Shown in the DLQ count: what bad input looks like, and that it is kept, not lost.
MALFORMED = [
    (b"demo", b'{"user_id": "12345", "item_id": '),
    (b"demo", b'{"user_id": "12345", "ts": 1291196400000}'),
    (b"demo", b"\xff\xfe\x00 not utf-8"),
    (b"demo", json.dumps({"user_id": "12345", "item_id": "NO-SUCH-ITEM", "ts": 1291196400000}).encode()),
    (b"demo", json.dumps({"user_id": "12345", "item_id": "85123A", "ts": "yesterday"}).encode()),
]
REPLICA = "demo-scorer"  # the scorer's name in its reports (how far it applied the catalog's changes)
TEXT_CANDIDATES = 20  # text neighbours interleaved when no learned merge could be fitted on the data


def _install(artifact: Path, models: Path) -> Path:
    """Copy an artifact into the models folder under its version."""
    out = models / load_manifest(artifact).version
    copy_artifact(artifact, out)
    return out


def _merge(data_dir: Path, encoder_dir: Path, out: Path) -> Path | None:
    """The learned merge in `out`: the one there when it was fitted on this encoder and signal set (delete
    `out` after preparing other data), else one fitted now; None when the fit is refused on this data."""
    try:
        head = MergeHead.read(out)
        if head.encoder == read_encoder_manifest(encoder_dir).version:
            print(f"reusing merge {head.version} in {out} (delete {out} to fit it again)")
            return out
    except MergeError:  # none yet, or from older code: the normal first run
        pass
    try:
        report = fit_merge(data_dir, encoder_dir, out)
    except MergeRefused as exc:  # some shops' titles say little: serve the interleave instead
        print(f"merge refused: {exc}\nserving co-visitation with {TEXT_CANDIDATES} text neighbours interleaved")
        return None
    print(
        f"merge {report.version}: {report.fit_baskets} baskets fitted, valid candidate recall@50 "
        f"{report.valid_recall_merged:.4f} vs co-visitation {report.valid_recall_covisit:.4f}"
    )
    return out


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(home: Path, *, events: int = 3000, source: Path | None = None, users_shown: int = 4) -> int:
    """Run the whole stream on Online Retail (`source` None) or on a bring-your-own folder; 0 when it worked."""
    t0 = time.perf_counter()
    _banner("local stack (Apache Kafka in KRaft mode + redis-server)")
    info = stack.up(home / "stack")
    print(f"kafka {info.bootstrap}   redis {info.redis_url}")

    _banner(f"data: {source or 'UCI Online Retail'} -> interactions, catalog, time split, co-visitation")
    data_dir = home / "data"
    print(describe(prepare(source, data_dir, DEFAULT_SPLIT if source is None else SplitByDays())))

    _banner("model: `rankstream compress --preset fast`: teacher -> distilled, pruned, INT8 students (~20 min)")
    models = home / "models"
    try:
        model_dir = resolve_model_dir(models)
        print(f"reusing {model_dir} (delete {models} to rebuild it on this data)")
    except ConfigError:  # no artifact yet: the normal first run
        run_root = compress(data_dir, home / "compress", "fast")
        model_dir = _install(best_student(run_root), models)
        print(f"compression report: {run_root / 'report.md'}")
    manifest = load_manifest(model_dir)
    print(f"artifact {model_dir.name}: {' -> '.join(manifest.method_chain)}")

    _banner("text encoder: the installed all-MiniLM-L6-v2 as a dynamic INT8 bi-encoder (`rankstream embed` tunes one)")
    encoder_dir = export_pretrained(home / "encoders")
    print(f"encoder {encoder_dir}")

    _banner("candidates: `rankstream merge fit`: a learned merge of co-visitation and text neighbours (~5 min)")
    merge_dir = _merge(data_dir, encoder_dir, home / "merge")

    env = {
        **os.environ,
        "RANKSTREAM_KAFKA_BOOTSTRAP": info.bootstrap,
        "RANKSTREAM_REDIS_URL": info.redis_url,
        "RANKSTREAM_MODEL_DIR": str(model_dir),
        "RANKSTREAM_ENCODER_DIR": str(encoder_dir),
        **({"RANKSTREAM_TEXT_CANDIDATES": str(TEXT_CANDIDATES)} if merge_dir is None else {}),
        **({} if merge_dir is None else {"RANKSTREAM_MERGE_DIR": str(merge_dir)}),
        "RANKSTREAM_REPLICA": REPLICA,
    }
    settings = load_settings(
        kafka_bootstrap=info.bootstrap,
        redis_url=info.redis_url,
        model_dir=model_dir,
        encoder_dir=encoder_dir,
        merge_dir=merge_dir,
        text_candidates=TEXT_CANDIDATES if merge_dir is None else 0,
    )
    _banner("tables into Redis, topics into Kafka")
    print(asyncio.run(load_tables_and_topics(settings, data_dir)))

    _banner(
        f"`rankstream serve`, `rankstream tables` and `rankstream catalog serve`, each its own process; "
        f"replay {events} test-period events, then publish new items"
    )
    log_path = home / "demo-scorer.log"
    tables_log = home / "demo-tables.log"
    catalog_log = home / "demo-catalog.log"
    evs = split_events(data_dir, "test", events)
    earlier = asyncio.run(topic_size(settings.kafka_bootstrap, settings.topic))
    tables = _start_job("tables", env, tables_log)
    catalog_job = _start_job("catalog", env, catalog_log, "serve")
    try:
        run = _serve_and_replay(settings, env, evs, log_path, then=partial(show_new_items, settings, evs, REPLICA))
        if run is not None:
            asyncio.run(_wait_for_tables(settings, tables, tables_log))
    finally:
        codes = {tables_log: _stop(tables), catalog_log: _stop(catalog_job)}
    if run is None:
        return 1
    for log_file, code in codes.items():
        if code != 0:
            print(f"{log_file.stem} exited with {code}; see {log_file}", file=sys.stderr)
            return 1
    position = asyncio.run(read_tables_position(settings))  # after its last write

    _banner("recommendations, read back from Redis as a frontend would")
    asyncio.run(_show_users(settings, evs, users_shown))

    _banner("new items: published on the catalog topic while the stream runs, servable within a second, no restart")
    print("\n".join(run.new_items.lines).lstrip("\n"))

    _banner("test-split quality: the model vs the non-neural orders on the same candidate lists")
    print(format_table(evaluate(data_dir, model_dir, split="test", max_instances=500)))

    _banner("counts")
    stats = run.stats
    print(f"events in:      {len(evs)} valid + {len(MALFORMED)} malformed + {run.new_items.clicks} clicks by new users")
    print(f"events scored:  {stats.events} (coalesced into fewer scorings: {stats.coalesced})")
    print(f"lists written:  {stats.lists_written}   pairs scored: {stats.pairs}")
    print(f"dead-lettered:  {run.dlq} (by reason: {stats.dlq_reasons})")
    print(f"consumer lag:   {run.lag}")
    behind = "" if position.caught_up else ", short of the topic's end"
    # `load` seeds the shares at the topic's end, so the records already there (an earlier run's) are the
    # seed's past: what this run's tables job read is what the shares went through beyond them.
    print(
        f"live tables:    {position.records - earlier} records read by the tables job into {position.partitions} "
        f"shares (valid ones applied, invalid ones skipped){behind}   log: {tables_log}"
    )
    if earlier:
        print(f"                the topic held {earlier} records from earlier runs: the seed's past, not read again")
    print(f"wall time:      {time.perf_counter() - t0:.0f}s   scorer log: {log_path}   catalog job log: {catalog_log}")
    # The stack outlives the demo so that a second run, `rankstream recs` or a frontend can use it.
    print(f"still running:  kafka {info.bootstrap}, redis {info.redis_url} (`rankstream stack down` stops them)")
    return 0 if run.new_items.ok else 1


@dataclass(frozen=True)
class ScorerRun:
    """What the demo's scorer process did: its own totals, the records it dead-lettered, the lag left."""

    stats: Stats
    dlq: int
    lag: int
    new_items: NewItems


def _serve_and_replay(
    settings: Settings,
    env: dict[str, str],
    evs: list[ClickEvent],
    log_path: Path,
    *,
    then: Callable[[], Awaitable[NewItems]],
) -> ScorerRun | None:
    """Start `rankstream serve`, replay `evs` and the malformed records, wait until all are scored, run
    `then` while the scorer still serves, stop it.

    None when the scorer exited with an error (said on stderr, with where its log is)."""
    with log_path.open("w") as log_file:
        scorer = subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli.main", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
        try:
            dlq_before = asyncio.run(topic_size(settings.kafka_bootstrap, settings.dlq_topic))
            sent, lag = asyncio.run(_replay_and_follow(settings, scorer, evs, log_path))
            print(f"replayed {len(evs)} events and {len(MALFORMED)} malformed records ({sent} records)")
            new_items = asyncio.run(then())
        finally:
            scorer.send_signal(signal.SIGTERM)
            out, _ = scorer.communicate(timeout=120)
    if scorer.returncode != 0:
        print(f"scorer exited with {scorer.returncode}; see {log_path}", file=sys.stderr)
        return None
    dlq = asyncio.run(topic_size(settings.kafka_bootstrap, settings.dlq_topic)) - dlq_before
    return ScorerRun(Stats.from_json(out.strip().splitlines()[-1]), dlq, lag, new_items)


async def _replay_and_follow(
    settings: Settings, scorer: subprocess.Popen[str], evs: list[ClickEvent], log_path: Path, limit_s: float = 900
) -> tuple[int, int]:
    """Replay `evs` and the malformed records while a bar counts what the scorer commits; (records sent, lag 0).

    Fails fast if the scorer dies, and after `limit_s` if it has not caught up.
    """
    start, backlog = await read_committed(settings)
    total = backlog + len(evs) + len(MALFORMED)
    deadline = time.monotonic() + limit_s
    # A plain task, not a TaskGroup: the errors below must reach the command as themselves, not in a group.
    sending = asyncio.create_task(replay(evs, settings.kafka_bootstrap, settings.topic, extra_raw=MALFORMED))
    try:
        with tqdm(total=total, desc="scoring", unit="event") as bar:
            async for done, lag in follow(partial(read_committed, settings), sending, start=start, total=total):
                bar.update(done - bar.n)
                if scorer.poll() is not None:
                    raise StackError(f"the demo's scorer exited early with {scorer.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise StackError(
                        f"the demo's scorer still lags {lag} events after {limit_s:.0f}s; see {log_path}, "
                        "or rerun with fewer --events"
                    )
        return await sending, lag
    finally:
        sending.cancel()  # a no-op once it is done; asyncio.run awaits it on the way out


def _start_job(command: str, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start one replica of `rankstream COMMAND ARGS` (tables, catalog serve), its output into `log_path`."""
    with log_path.open("w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "rankstream.cli.main", command, *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 60) -> int:
    """SIGTERM (the tables job writes the batch in hand, then exits), SIGKILL after `grace_s`; the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass(frozen=True)
class TablesPosition:
    """Where the live-table shares stand against the clicks topic."""

    records: int  # records of the topic the shares went through since `load` seeded them
    partitions: int
    caught_up: bool  # every share reflects its partition up to the end


def tables_progress(offsets: Mapping[int, int], bounds: Mapping[int, tuple[int, int]]) -> tuple[int, bool]:
    """(records the shares went through, whether each reached its partition's end).

    Args:
        offsets: each share's stored offset, the last record it applied or skipped (-1: seeded only; a
            missing share counts as that).
        bounds: each partition's (beginning, end) offsets.
    """
    records, caught_up = 0, True
    for partition, (begin, end) in bounds.items():
        last = offsets.get(partition, -1)
        records += max(0, last + 1 - begin)
        caught_up = caught_up and last + 1 >= end
    return records, caught_up


async def read_tables_position(settings: Settings) -> TablesPosition:
    """The shares' stored offsets (Redis) against the topic's offsets (the brokers)."""
    client = connect_from_settings(settings)
    try:
        topic, partitions, _ = await read_meta(client)
        stored = [await client.hget(share_keys(topic, p)[0], "offset") for p in range(partitions)]
    finally:
        await client.aclose()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.kafka_client_options())
    await consumer.start()
    try:
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    offsets = {p: int(v) for p, v in enumerate(stored) if v is not None}
    records, caught_up = tables_progress(offsets, {tp.partition: (begins[tp], ends[tp]) for tp in tps})
    return TablesPosition(records, partitions, caught_up)


async def _wait_for_tables(
    settings: Settings, tables: subprocess.Popen[bytes], log_path: Path, limit_s: float = 120
) -> None:
    """Until the shares reflect every record of the topic, or `limit_s`; fails fast if the job exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if tables.poll() is not None:
            raise StackError(f"the demo's tables job exited early with {tables.returncode}; see {log_path}")
        if (await read_tables_position(settings)).caught_up:
            return
        await asyncio.sleep(1.0)


async def _show_users(settings: Settings, evs: list[ClickEvent], n: int) -> None:
    store = Store.from_settings(settings)
    try:
        catalog = await store.read_catalog()
        counts: dict[str, int] = {}
        for e in evs:
            counts[e.user_id] = counts.get(e.user_id, 0) + 1
        # Users with a few events read best: enough history, lists that reflect it.
        shown = sorted(counts, key=lambda u: (-min(counts[u], 12), u))[:n]
        for user in shown:
            rec = await store.read_list(user)
            hist = await store.read_history(user)
            print(f"\nuser {user} ({counts[user]} events in this replay)")
            print("  recently bought:  " + "; ".join(catalog.get(i, i).lower() for i in hist[:5]))
            if rec is None:
                print("  (no list)")
                continue
            print(
                f"  recommended by {rec['model_version']} (reflects partition {rec['partition']} "
                f"offset {rec['offset']}):"
            )
            for k, it in enumerate(rec["items"], 1):
                print(f"   {k:>2}. {catalog.get(it['item_id'], it['item_id']).lower():<45} {it['score']:+.3f}")
    finally:
        await store.close()
