"""The `rankstream` command. Each subcommand is a thin shell over a library function.

Subcommands import what they need inside their handler: the scorer image installs the serving
dependencies only, so `rankstream serve` must start without pandas or torch installed.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rankstream.cli import models as models_cli
from rankstream.stream.errors import ConfigError, RankstreamError
from rankstream.stream.rollouts import DEFAULT_SHADOW_SAMPLE

if TYPE_CHECKING:  # pandas-free at run time: `rankstream serve` starts without it
    from rankstream.data.split import Split, SplitByDays
    from rankstream.evaluation.text import ItemVectors
    from rankstream.stream.retrieval import MergeHead


def home() -> Path:
    """Where local state lives: the stack, prepared data, model artifacts."""
    return Path(os.environ.get("RANKSTREAM_HOME", "var")).resolve()


def _stack(args: argparse.Namespace) -> int:
    from rankstream.deploy import stack

    state = home() / "stack"
    if args.action == "up":
        info = stack.up(state)
    elif args.action == "down":
        stack.down(state)
        print("stack stopped")
        return 0
    else:
        info = stack.status(state)
        if info is None:
            print("stack is not running (rankstream stack up)")
            return 1
    print(f"kafka bootstrap: {info.bootstrap}\nredis url:       {info.redis_url}\nstate:           {info.state_dir}")
    print(f"export RANKSTREAM_KAFKA_BOOTSTRAP={info.bootstrap} RANKSTREAM_REDIS_URL={info.redis_url}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from rankstream.data.prepare import prepare
    from rankstream.ops.load import describe

    prepared = prepare(args.source, args.out or home() / "data", _split_choice(args))
    print(describe(prepared))
    return 0


def _split_choice(args: argparse.Namespace) -> "Split | SplitByDays":
    """The split `prepare` was asked for: fixed dates, day counts, or (none given) the source's default."""
    from rankstream.data.split import DEFAULT_SPLIT, Split, SplitByDays

    dates = (args.train_end, args.valid_end)
    days = (args.test_days, args.valid_days)
    given_days = [d for d in days if d is not None]
    if any(dates) and given_days:
        raise ConfigError(
            "prepare: pass either --train-end and --valid-end (ISO dates) or --test-days/--valid-days "
            "(whole days), not both"
        )
    if any(dates):
        if not all(dates):
            raise ConfigError(
                "prepare: --train-end and --valid-end go together; pass both ISO dates "
                "(train is before --train-end, valid up to --valid-end, test from --valid-end on)"
            )
        return Split(*dates)
    if given_days or args.source is not None:
        return SplitByDays(*days)
    return DEFAULT_SPLIT  # Online Retail: the documented split the demo's numbers depend on


def _load(args: argparse.Namespace) -> int:
    from rankstream.ops.load import load_tables_and_topics
    from rankstream.stream.settings import load_settings

    settings = load_settings()
    print(asyncio.run(load_tables_and_topics(settings, args.data or home() / "data", args.partitions)))
    return 0


def _compress(args: argparse.Namespace) -> int:
    from rankstream.jobs.compress import best_student, clean, compress
    from rankstream.stream.artifact import copy_artifact, load_manifest

    out = args.out or home() / "compress"
    if args.restart:
        clean(out, args.preset)
    data = args.data or home() / "data"
    merge = None
    if args.merge is not None or args.encoder is not None:
        from rankstream.jobs.merge import merge_for_training

        if args.merge is None or args.encoder is None:
            raise ConfigError("--merge DIR and --encoder DIR go together: the merge and the vectors it was fitted on")
        merge = merge_for_training(data, args.merge, args.encoder)
    root = compress(data, out, args.preset, merge)
    print(f"report: {root / 'report.md'} (+ report.json, pareto.png)")
    if args.install:
        artifact = best_student(root)
        target = args.install / load_manifest(artifact).version
        if not target.exists():
            copy_artifact(artifact, target)
        print(f"model artifact: {target}")
    return 0


def _recompress(args: argparse.Namespace) -> int:
    from rankstream.jobs.recompress import Paths, config_from, run_job
    from rankstream.stream.settings import load_settings

    settings = load_settings()
    paths = Paths(
        data=args.data or home() / "data",
        compress_run=args.compress_run or home() / "compress" / "fast",
        registry=args.registry or settings.model_dir or home() / "models",
        work=args.work or home() / "recompress",
    )
    config = config_from(
        args.preset,
        days=args.days,
        since=args.since,
        from_kafka=args.from_kafka,
        steps=args.steps,
        tolerance=args.tolerance,
        holdout=args.holdout,
        canary=args.canary,
    )
    result = run_job(settings, paths, config, every=args.every)
    if result is None:  # --every runs until the process is stopped
        return 0
    print(result.format())
    return 0 if result.published else 1


def _bench_model(args: argparse.Namespace) -> int:
    from rankstream.bench.model import bench_model, format_bench

    run = args.run or home() / "compress" / "fast"
    result = bench_model(
        run,
        args.data or home() / "data",
        split=args.split,
        max_instances=args.max_instances,
        rerank_top=args.rerank_top,
    )
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _bench_fusions(args: argparse.Namespace) -> int:
    from rankstream.bench.fusions import bench_fusions, format_fusions

    result = bench_fusions(args.checkpoint, args.data or home() / "data", users=args.users, split=args.split)
    print(result.to_json() if args.json else format_fusions(result))
    return 0


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def _bench_stream(args: argparse.Namespace) -> int:
    from rankstream.bench.repeat import bench_stream_repeated, format_repeated
    from rankstream.bench.stream import bench_stream, format_bench
    from rankstream.stream.service import resolve_model_dir

    model = resolve_model_dir(args.model or home() / "models")
    given = (("rerank_top", args.rerank_top), ("score_chunk_users", args.chunk_users), ("user_quiet_ms", args.quiet_ms))
    given += (("text_candidates", args.text_candidates), ("encoder_dir", args.encoder), ("merge_dir", args.merge))
    overrides = {k: v for k, v in given if v is not None}
    options = {"events": args.events, "share": args.share, "live_events": args.live_events, **overrides}
    options["with_tables"] = args.with_tables
    options["shadow_sample"] = args.shadow
    if args.repeat is not None:
        repeated = asyncio.run(bench_stream_repeated(home(), model, args.repeat, **options))
        print(repeated.to_json() if args.json else format_repeated(repeated))
        return 0
    result = asyncio.run(bench_stream(home(), model, **options))
    print(result.to_json() if args.json else format_bench(result))
    return 0


def _bench_live(args: argparse.Namespace) -> int:
    from rankstream.bench.live import bench_live, format_live
    from rankstream.stream.service import resolve_model_dir

    model = resolve_model_dir(args.model or home() / "models")
    result = bench_live(home(), model, rate=args.rate, limit=args.limit, frozen=args.frozen, arms_run=args.arms)
    print(result.to_json() if args.json else format_live(result))
    return 0


def _bench_events(args: argparse.Namespace) -> int:
    from rankstream.bench.events import TABLES, bench_events, format_events
    from rankstream.data.prepare import Prepared
    from rankstream.evaluation.endtoend import load_model
    from rankstream.stream.live import LiveParams
    from rankstream.stream.service import resolve_model_dir
    from rankstream.stream.settings import load_settings

    if args.every < 1:
        raise ConfigError(f"--every is a positive count of events, got {args.every}")
    tables = args.tables.split(",")
    if not tables or any(t not in TABLES for t in tables):
        raise ConfigError(f"--tables takes a comma-separated list of {', '.join(TABLES)}, got {args.tables!r}")
    if args.half_life is not None and not args.half_life > 0:
        raise ConfigError(f"--half-life is a positive number of days, got {args.half_life}")
    model = resolve_model_dir(args.model or home() / "models")
    ranker, top = load_model(model, load_settings())
    prepared = Prepared.load(args.data or home() / "data")
    params = LiveParams() if args.half_life is None else LiveParams(half_life_days=args.half_life)
    result = bench_events(prepared, ranker, top, every=args.every, tables=tables, params=params)
    print(result.to_json() if args.json else format_events(result))
    return 0


def _bench_tables(args: argparse.Namespace) -> int:
    from rankstream.bench.tables import bench_tables, format_tables

    result = bench_tables(home(), rate=args.rate, replicas=args.replicas, kills=args.kills, every_s=args.every)
    print(result.to_json() if args.json else format_tables(result))
    return 0 if result.equal_offline and result.equal_uninterrupted and not result.lost else 1


def _bench_swap(args: argparse.Namespace) -> int:
    from rankstream.bench.swap import bench_swap, format_swap

    result = asyncio.run(
        bench_swap(
            home(),
            args.models,
            rate=args.rate,
            swaps=args.swaps,
            every_s=args.every,
            replicas=args.replicas,
            share=args.share,
            ladder_events=args.ladder_events,
            ladder_start=args.ladder_start,
            ladder_steps=args.ladder_steps,
        )
    )
    print(result.to_json() if args.json else format_swap(result))
    return 0


def _bench_canary(args: argparse.Namespace) -> int:
    from rankstream.bench.canary import bench_canary, format_canary
    from rankstream.stream.service import resolve_model_dir

    model = resolve_model_dir(args.model or home() / "models")
    options = {"share": args.share, "replicas": args.replicas, "min_events": args.min_events, "max_s": args.max_s}
    result = asyncio.run(bench_canary(home(), model, kind=args.kind, rate=args.rate, **options))
    print(result.to_json() if args.json else format_canary(result))
    return 0


def _bench_catalog(args: argparse.Namespace) -> int:
    from rankstream.bench.catalog import bench_catalog, format_catalog
    from rankstream.stream.service import resolve_model_dir

    model = resolve_model_dir(args.model or home() / "models")
    options = {
        "items": args.items,
        "rate": args.rate,
        "replicas": args.replicas,
        "text_candidates": args.text_candidates,
        "merge": args.merge,
    }
    result = asyncio.run(bench_catalog(home(), model, args.encoder, **options))
    print(result.to_json() if args.json else format_catalog(result))
    return 0 if result.never_servable == result.users_not_reflected == 0 else 1


def _bench_chaos(args: argparse.Namespace) -> int:
    from rankstream.bench.chaos import bench_chaos
    from rankstream.bench.chaos_figures import format_chaos
    from rankstream.stream.service import resolve_model_dir

    model = resolve_model_dir(args.model or home() / "models")
    options = {"minutes": args.minutes, "rate": args.rate, "replicas": args.replicas, "seed": args.seed}
    result = asyncio.run(bench_chaos(home(), model, **options))
    print(result.to_json() if args.json else format_chaos(result))
    clean = result.lost == result.not_reflected == result.dlq_mismatched == result.corrupt_served == 0
    return 0 if clean and result.minutes_without_progress_after_recovery == 0 else 1


def _serve(args: argparse.Namespace) -> int:
    from rankstream.stream.service import serve
    from rankstream.stream.settings import load_settings

    overrides = {"model_dir": args.model_dir} if args.model_dir else {}
    stats = asyncio.run(serve(load_settings(**overrides)))
    print(stats.to_json())
    return 0


def _tables(args: argparse.Namespace) -> int:
    from rankstream.stream.settings import load_settings
    from rankstream.stream.tablesjob import run_tables

    asyncio.run(run_tables(load_settings()))
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from rankstream.ops.catalog import catalog_command
    from rankstream.stream.settings import load_settings

    out, status = catalog_command(args.action, load_settings(), file=args.file, items=args.items)
    print(out)
    return status


def _replay(args: argparse.Namespace) -> int:
    from rankstream.ops.load import replay_split
    from rankstream.stream.settings import load_settings

    settings = load_settings()
    n = asyncio.run(replay_split(settings, args.data or home() / "data", args.split, limit=args.limit, rate=args.rate))
    print(f"replayed {n} events to {settings.topic}")
    return 0


def _pretrained_vectors(catalog: Mapping[str, str]) -> "ItemVectors":
    """The catalog's titles through the installed all-MiniLM-L6-v2, untrained (`--text`)."""
    from rankstream.compression.embed import item_vectors
    from rankstream.evaluation.text import ItemVectors

    matrix, ids = item_vectors(catalog)
    return ItemVectors(tuple(ids), matrix)


def _steps(text: str) -> tuple[int, ...]:
    return tuple(_positive(x) for x in text.split(",") if x.strip())


def _merge(args: argparse.Namespace) -> int:
    from rankstream.jobs.merge import MergeConfig, fit_merge

    config = MergeConfig(args.pool_covisit, args.pool_text, args.candidates, args.fit_days)
    if config.pool_text < 0:
        raise ConfigError(f"--pool-text is a count of text neighbours (0: none), got {config.pool_text}")
    report = fit_merge(args.data or home() / "data", args.encoder, args.out or home() / "merge", config)
    print(json.dumps(asdict(report), indent=2))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from rankstream.jobs.embed import EmbedConfig, EmbedJob

    config = EmbedConfig(
        steps=args.steps,
        student_layers=args.student_layers,
        student_ffn=args.student_ffn,
        student_steps=args.student_steps,
        batch_size=args.batch_size,
        snapshots=args.snapshots,
    )
    report = EmbedJob(args.data or home() / "data", args.out or home() / "embed", config).run()
    print(json.dumps(asdict(report), indent=2, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rankstream.evaluation.evaluate import evaluate, format_table
    from rankstream.stream.service import resolve_model_dir

    if args.end_to_end:
        from rankstream.evaluation.endtoend import installed_model, run_end_to_end
        from rankstream.evaluation.text import PRETRAINED, TUNED
        from rankstream.stream.settings import load_settings

        if (args.encoder or args.merge) and not args.text:
            raise ConfigError("--encoder DIR and --merge DIR need the text orders' vectors: add --text")
        if args.open_baskets < 0:
            raise ConfigError(f"--open-baskets is a count of open states per basket (0: none), got {args.open_baskets}")
        chosen = resolve_model_dir(args.model) if args.model else installed_model(home() / "models")
        data = args.data or home() / "data"
        embed = _pretrained_vectors if args.text else None
        encoder, names = "all-MiniLM-L6-v2 (pretrained, mean-pooled, normalised)", PRETRAINED
        if args.encoder:
            from rankstream.jobs.embed import encoder_vectors

            (embed, encoder), names = encoder_vectors(args.encoder), TUNED
        e2e = run_end_to_end(
            data,
            args.split,
            chosen,
            load_settings(),
            accept_signals=args.accept_signal_set,
            embed=embed,
            encoder=encoder,
            names=names,
            open_baskets=args.open_baskets,
            merge=None if args.merge is None else _merge_head(args.merge),
            model_frozen=args.model_frozen,
        )
        print(e2e.to_json() if args.json else e2e.format())
        return 0
    model = resolve_model_dir(args.model or home() / "models")
    result = evaluate(args.data or home() / "data", model, split=args.split, max_instances=args.max_instances)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _merge_head(directory: Path) -> "MergeHead":
    from rankstream.stream.retrieval import MergeError, MergeHead

    try:
        return MergeHead.read(directory)
    except MergeError as exc:
        raise ConfigError(f"--merge: {exc}") from exc


def _recs(args: argparse.Namespace) -> int:
    from rankstream.ops.load import read_recs
    from rankstream.stream.settings import load_settings

    print(json.dumps(asyncio.run(read_recs(load_settings(), args.user)), indent=2))
    return 0


def _models(args: argparse.Namespace) -> int:
    from rankstream.cli.models import run_models
    from rankstream.stream.settings import load_settings

    print(asyncio.run(run_models(args, load_settings(), home() / "models")))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rankstream.ops.demo import run_demo

    return run_demo(home(), events=args.events, source=args.source)


# Long because it declares every subcommand in one place, in the order `--help` lists them.
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankstream", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("stack", help="start/stop/show the local Kafka + Redis")
    s.add_argument("action", choices=["up", "down", "status"])
    s.set_defaults(fn=_stack)

    s = sub.add_parser("prepare", help="convert and split the data, compute co-visitation")
    s.add_argument("--source", type=Path, help="directory with interactions + catalog files (default: UCI retail)")
    s.add_argument("--out", type=Path)
    by_date = s.add_argument_group(
        "split by dates", "train: ts < TRAIN_END, valid: up to VALID_END, test: from VALID_END on (UTC)"
    )
    by_date.add_argument("--train-end", metavar="DATE", help="ISO date, e.g. 2019-11-01")
    by_date.add_argument("--valid-end", metavar="DATE", help="ISO date, e.g. 2019-12-01")
    by_days = s.add_argument_group(
        "split by days",
        "test: the data's last TEST_DAYS whole UTC days, valid: the VALID_DAYS before; a count not given is "
        "10%% of the days (the default with --source; Online Retail without --source: docs/data.md)",
    )
    by_days.add_argument("--test-days", type=int, metavar="N")
    by_days.add_argument("--valid-days", type=int, metavar="N")
    s.set_defaults(fn=_prepare)

    s = sub.add_parser(
        "load", help="load the catalog, seed the live tables with the history before the test split; create topics"
    )
    s.add_argument("--data", type=Path)
    s.add_argument("--partitions", type=int, default=4)
    s.set_defaults(fn=_load)

    s = sub.add_parser("compress", help="teacher -> distilled, layer-dropped, INT8 students; gate; report")
    s.add_argument("--preset", choices=["fast", "full", "tiny"], default="fast")
    s.add_argument("--data", type=Path)
    s.add_argument("--out", type=Path, help="runs go to OUT/<preset> (default: $RANKSTREAM_HOME/compress)")
    s.add_argument("--restart", action="store_true", help="discard the preset's previous run instead of resuming")
    s.add_argument("--install", type=Path, metavar="MODELS", help="copy the best gated student into MODELS/<version>")
    s.add_argument(
        "--merge", type=Path, metavar="DIR", help="train and gate on a learned merge's candidates (`merge fit`)"
    )
    s.add_argument("--encoder", type=Path, metavar="DIR", help="with --merge: the bi-encoder it was fitted on")
    s.set_defaults(fn=_compress)

    s = sub.add_parser(
        "recompress",
        help="re-distil the served student on recent clicks; gate against the active model; publish",
        description="Exit status: 0 published, 1 refused by the gate (nothing published), 2 error.",
    )
    s.add_argument("--preset", choices=["fast", "tiny"], default="fast")
    window = s.add_mutually_exclusive_group()
    window.add_argument("--days", type=float, help="window: the last DAYS days of clicks (fast preset: 28)")
    window.add_argument("--since", help="window: clicks since this ISO-8601 time (UTC unless it names a zone)")
    s.add_argument("--from-kafka", action="store_true", help="read the window from the clicks topic, not the files")
    s.add_argument("--steps", type=int, help="distillation steps (fast preset: 200)")
    s.add_argument("--tolerance", type=float, help="NDCG@10 the new model may lose vs the active one (default 0.01)")
    s.add_argument("--holdout", type=float, help="share of the newest baskets held out for the gate (default 0.2)")
    s.add_argument(
        "--canary", type=float, metavar="SHARE", help="publish into a canary at SHARE of users, not straight to active"
    )
    s.add_argument("--every", metavar="DURATION", help="run a cycle every DURATION (30m, 6h, 1d) until stopped")
    s.add_argument("--data", type=Path)
    s.add_argument("--compress-run", type=Path, help="default: $RANKSTREAM_HOME/compress/fast")
    s.add_argument("--registry", type=Path, help="default: $RANKSTREAM_MODEL_DIR, else $RANKSTREAM_HOME/models")
    s.add_argument("--work", type=Path, help="per-cycle folders (default: $RANKSTREAM_HOME/recompress)")
    s.set_defaults(fn=_recompress)

    s = sub.add_parser("bench", help="benchmarks")
    bench = s.add_subparsers(dest="bench_cmd", required=True)
    b = bench.add_parser("model", help="every artifact of a compress run vs the baselines on the test split")
    b.add_argument("--run", type=Path, help="a compress run directory (default: $RANKSTREAM_HOME/compress/fast)")
    b.add_argument("--data", type=Path)
    b.add_argument("--split", choices=["valid", "test"], default="test")
    b.add_argument("--max-instances", type=int, default=500)
    b.add_argument(
        "--rerank-top", type=int, default=20, help="also score students cross-encoding only this many candidates"
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_model)
    b = bench.add_parser("fusions", help="a checkpoint exported with and without ORT's slow fused kernels, timed")
    b.add_argument(
        "--checkpoint", type=Path, required=True, help="a fine-tuned cross-encoder folder (a compress run's work/)"
    )
    b.add_argument("--data", type=Path)
    b.add_argument("--split", choices=["valid", "test"], default="test")
    b.add_argument("--users", type=_positive, default=300, help="rankable lists to score per round")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_fusions)
    b = bench.add_parser("stream", help="the scorer on the real Kafka and Redis: max rate, then a fixed rate")
    b.add_argument("--model", type=Path, help="an artifact (default: the newest in $RANKSTREAM_HOME/models)")
    b.add_argument("--events", type=int, default=3000, help="events in the max-rate phase")
    b.add_argument("--share", type=float, default=0.8, help="fixed rate as a share of the max")
    b.add_argument("--live-events", type=int, help="replay only this many events in each live phase (default: all)")
    b.add_argument("--rerank-top", type=int, help="RANKSTREAM_RERANK_TOP for this run")
    b.add_argument("--chunk-users", type=int, help="RANKSTREAM_SCORE_CHUNK_USERS for this run")
    b.add_argument("--quiet-ms", type=int, help="RANKSTREAM_USER_QUIET_MS for this run")
    b.add_argument("--with-tables", action="store_true", help="a `rankstream tables` replica beside the scorer")
    b.add_argument("--text-candidates", type=int, help="RANKSTREAM_TEXT_CANDIDATES for this run (needs --encoder)")
    b.add_argument("--encoder", type=Path, help="RANKSTREAM_ENCODER_DIR for this run: the title vectors to search")
    b.add_argument("--merge", type=Path, help="RANKSTREAM_MERGE_DIR for this run: a learned merge (needs --encoder)")
    b.add_argument(
        "--shadow",
        type=float,
        nargs="?",
        const=DEFAULT_SHADOW_SAMPLE,
        metavar="SAMPLE",
        help=f"then the 80%% phase with a shadow version scoring SAMPLE of users, and without again "
        f"(default sample {DEFAULT_SHADOW_SAMPLE})",
    )
    b.add_argument(
        "--repeat", type=_positive, help="run the whole benchmark N times back to back; report each and the worst"
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_stream)
    b = bench.add_parser("live", help="served-list hit-rate over the test period, tables frozen vs live")
    b.add_argument("--model", type=Path, help="an artifact (default: the newest in $RANKSTREAM_HOME/models)")
    b.add_argument("--rate", type=float, default=500.0, help="events/s, the same for both arms")
    b.add_argument("--limit", type=int, help="only the first N test events (default: the whole test period)")
    b.add_argument(
        "--frozen",
        choices=("train", "seeded"),
        default="train",
        help="the frozen arm's tables: the train split's, as prepare computed them (default), or every event "
        "before the test period, then held",
    )
    b.add_argument(
        "--arms",
        choices=("together", "apart"),
        default="together",
        help="run both arms at once, each at --rate, on the same cores at the same moments (default), or one "
        "after the other",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_live)
    b = bench.add_parser(
        "events",
        help="bench live's per-event check offline, every list written just before its event: tables live, held "
        "at the train split, or just before the event's basket",
    )
    b.add_argument("--model", type=Path, help="an artifact (default: the newest in $RANKSTREAM_HOME/models)")
    b.add_argument("--data", type=Path, help="prepared data (default: $RANKSTREAM_HOME/data)")
    b.add_argument("--every", type=int, default=16, help="check every N-th test event (default 16)")
    b.add_argument("--tables", default="live,held,before", help="the arms, comma-separated (default: all three)")
    b.add_argument(
        "--half-life",
        type=float,
        help="days: the co-visitation's half-life in every arm's tables (default: the one `load` seeds)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_events)
    b = bench.add_parser("tables", help="the live-tables job: maximum rate, freshness, shares after kill -9s")
    b.add_argument("--rate", type=float, default=800.0, help="events/s for the freshness and kill runs")
    b.add_argument("--replicas", type=int, default=2)
    b.add_argument("--kills", type=int, default=20)
    b.add_argument("--every", type=float, default=3.0, help="seconds between kills, on average")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_tables)
    b = bench.add_parser("swap", help="replicas under steady load while the active version flips every N seconds")
    b.add_argument("--models", type=Path, nargs=2, required=True, help="two artifact directories to alternate")
    b.add_argument(
        "--rate", type=float, help="events/s of the swaps (default: --share of what the replicas sustain on a ladder)"
    )
    b.add_argument("--swaps", type=int, default=20)
    b.add_argument("--every", type=float, default=30.0, help="seconds between swaps")
    b.add_argument("--replicas", type=int, default=2)
    b.add_argument("--share", type=float, default=0.8, help="without --rate: the swaps' rate as a share of the max")
    b.add_argument(
        "--ladder-events", type=_positive, default=None, help="events per ladder step (default: the whole test period)"
    )
    b.add_argument("--ladder-start", type=float, default=800.0, help="the ladder's first rate, events/s")
    b.add_argument("--ladder-steps", type=_positive, default=8, help="at most this many ladder steps")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_swap)
    b = bench.add_parser("catalog", help="new items from the catalog topic to every scorer's index, under load")
    b.add_argument("--encoder", type=Path, required=True, help="a bi-encoder artifact directory (rankstream embed)")
    b.add_argument("--model", type=Path, help="the ranker artifact (default: the installed one)")
    b.add_argument("--items", type=int, default=100)
    b.add_argument("--rate", type=float, default=300.0, help="events/s of the click load beside it")
    b.add_argument("--replicas", type=int, default=1)
    b.add_argument("--text-candidates", type=int, default=20)
    b.add_argument("--merge", type=Path, help="RANKSTREAM_MERGE_DIR: a learned merge instead of the interleave")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_catalog)
    b = bench.add_parser("canary", help="a canary under load, promoted or rolled back by the replicas on live figures")
    b.add_argument("--kind", choices=["worse", "equal"], required=True, help="the candidate (bench/canary.py)")
    b.add_argument("--model", type=Path, help="an artifact (default: the newest in $RANKSTREAM_HOME/models)")
    b.add_argument("--rate", type=float, required=True, help="events/s")
    b.add_argument("--share", type=float, default=0.1, help="share of users the canary serves")
    b.add_argument("--replicas", type=int, default=2)
    b.add_argument("--min-events", type=int, default=2000, help="events per arm before the final look")
    b.add_argument("--max-s", type=float, default=240.0, help="seconds of load after the canary starts")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_canary)
    b = bench.add_parser(
        "chaos", help="replicas under steady load through kill -9s, broker and Redis faults, bad input"
    )
    b.add_argument("--model", type=Path, help="an artifact (default: the newest in $RANKSTREAM_HOME/models)")
    b.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    b.add_argument("--rate", type=float, required=True, help="events/s (50%% of `bench stream`'s maximum sustained)")
    b.add_argument("--replicas", type=int, default=2)
    b.add_argument("--seed", type=int, default=0, help="the fault schedule's seed: the same seed, the same run")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench_chaos)

    s = sub.add_parser("serve", help="run one scorer replica (settings from RANKSTREAM_* variables)")
    s.add_argument("--model-dir", type=Path)
    s.set_defaults(fn=_serve)

    s = sub.add_parser("tables", help="run one live-tables replica: every valid click moves the item tables in Redis")
    s.set_defaults(fn=_tables)

    s = sub.add_parser(
        "catalog", help="the catalog topic: run the job that indexes it; add or remove items; swap the text encoder"
    )
    catalog = s.add_subparsers(dest="action", required=True)
    c = catalog.add_parser("serve", help="run one catalog job replica: titles and their vectors into Redis")
    c.set_defaults(fn=_catalog, file=None, items=[])
    c = catalog.add_parser("add", help="publish every row of a CSV (item_id,title[,category,price]) or JSONL file")
    c.add_argument("file", type=Path)
    c.set_defaults(fn=_catalog, items=[])
    c = catalog.add_parser("remove", help="publish a tombstone for each item")
    c.add_argument("items", nargs="+", metavar="ITEM")
    c.set_defaults(fn=_catalog, file=None)
    c = catalog.add_parser(
        "reembed",
        help="make another text encoder active without a restart: verify and install it beside "
        "RANKSTREAM_ENCODER_DIR, embed every title, then switch every catalog job and scorer to it",
    )
    c.add_argument("file", type=Path, metavar="DIR", help="a bi-encoder artifact directory")
    c.set_defaults(fn=_catalog, items=[])
    c = catalog.add_parser("encoders", help="the active encoder, one being filled in, and each one's vectors")
    c.set_defaults(fn=_catalog, file=None, items=[])

    s = sub.add_parser("replay", help="publish a split's interactions as click events, in time order")
    s.add_argument("--data", type=Path)
    s.add_argument("--split", choices=["train", "valid", "test"], default="test")
    s.add_argument("--limit", type=int)
    s.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    s.set_defaults(fn=_replay)

    s = sub.add_parser("eval", help="NDCG@10 / Recall@10 / MRR of a model vs the co-visitation order")
    s.add_argument("--model", type=Path)
    s.add_argument("--data", type=Path)
    s.add_argument("--split", choices=["valid", "test"], default="test")
    s.add_argument("--max-instances", type=int, default=1000)
    s.add_argument(
        "--end-to-end",
        action="store_true",
        help="every eligible basket, against all its new items: frozen vs live co-visitation vs the model "
        "(default model: the newest in $RANKSTREAM_HOME/models, if any); ignores --max-instances",
    )
    s.add_argument(
        "--accept-signal-set", metavar="SET", help="with --end-to-end: measure a model trained on this older signal set"
    )
    s.add_argument(
        "--text",
        action="store_true",
        help="with --end-to-end: add the text orders, from the catalog titles through the pretrained "
        "all-MiniLM-L6-v2 (text neighbours, merged with covisit-live, covisit-live by text similarity)",
    )
    s.add_argument(
        "--encoder",
        type=Path,
        metavar="DIR",
        help="with --text: vectors from a fine-tuned bi-encoder (`rankstream embed`), an ONNX artifact "
        "(a folder with manifest.json) or a Hugging Face model folder; orders named text-tuned, merged-tuned, "
        "covisit-live-cosine-tuned",
    )
    s.add_argument(
        "--merge",
        type=Path,
        metavar="DIR",
        help="with --text: add the learned merge's orders (`rankstream merge fit`), merged-learned and "
        "model-merged; give --encoder the bi-encoder it was fitted on",
    )
    s.add_argument(
        "--open-baskets",
        type=int,
        default=1,
        metavar="N",
        help="with --end-to-end: also the orders on up to N open states of each basket (the basket after its "
        "first k lines; most served lists are read in one); 0 leaves them out (default: 1)",
    )
    s.add_argument(
        "--model-frozen",
        action="store_true",
        help="with --end-to-end: add model-frozen, the model on the train split's tables never moved (what "
        "`bench live`'s frozen arm serves), and its ratio to model-live; a second replay of the tables",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_eval)

    s = sub.add_parser(
        "embed",
        help="fine-tune all-MiniLM-L6-v2 on co-purchased titles, distil a smaller student, export it INT8, "
        "and refuse it below 0.97x the teacher's valid retrieval recall@50",
    )
    s.add_argument("--steps", type=int, required=True, help="teacher training steps")
    s.add_argument("--student-layers", type=int, default=2, help="teacher layers the student keeps, evenly spaced")
    s.add_argument(
        "--student-ffn",
        type=float,
        default=1.0,
        help="share of each kept layer's FFN neurons the student keeps, the most important by the distillation "
        "loss (default 1: no pruning)",
    )
    s.add_argument("--student-steps", type=int, help="student distillation steps (default: --steps)")
    s.add_argument("--batch-size", type=int, default=64, help="pairs per step (each batch's in-batch negatives)")
    s.add_argument(
        "--snapshots", type=_steps, default=(), help="teacher steps to save a copy at, comma-separated (100,300)"
    )
    s.add_argument("--data", type=Path)
    s.add_argument("--out", type=Path, help="default: $RANKSTREAM_HOME/embed")
    s.set_defaults(fn=_embed)

    s = sub.add_parser(
        "merge",
        help="fit a learned merge of co-visitation and text candidates on the train split's last days, "
        "check it on valid, write merge.json (RANKSTREAM_MERGE_DIR)",
    )
    s.add_argument("action", choices=["fit"])
    s.add_argument("--encoder", type=Path, required=True, help="the bi-encoder whose title vectors the scorers search")
    s.add_argument("--pool-covisit", type=_positive, default=200, help="co-visitation candidates pooled per user")
    s.add_argument("--pool-text", type=int, default=50, help="text neighbours pooled per user")
    s.add_argument("--candidates", type=_positive, default=50, help="candidates it picks (RANKSTREAM_CANDIDATES)")
    s.add_argument("--fit-days", type=_positive, default=90, help="the train split's last days the head is fitted on")
    s.add_argument("--data", type=Path)
    s.add_argument("--out", type=Path, help="default: $RANKSTREAM_HOME/merge")
    s.set_defaults(fn=_merge)

    s = sub.add_parser("recs", help="print a user's list as a frontend reads it")
    s.add_argument("user")
    s.set_defaults(fn=_recs)

    models_cli.add_parser(sub, _models)

    s = sub.add_parser("demo", help="the whole stream on real data, from nothing to printed recommendations")
    s.add_argument("--events", type=int, default=3000, help="test-period events to replay")
    s.add_argument(
        "--source",
        type=Path,
        help="interactions + catalog folder, split as `prepare --source` splits it (default: UCI retail)",
    )
    s.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party clients are chatty at INFO; their warnings still show.
    for noisy in ("aiokafka", "kafka", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except RankstreamError as exc:
        # A user's mistake or an unavailable service: one line that says what to do; -v adds the trace.
        if args.verbose:
            traceback.print_exc()
        print(f"rankstream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
