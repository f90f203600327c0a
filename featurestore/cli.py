"""The ``mlfs`` command line. Errors are one line on stderr (``MLFS_DEBUG=1`` adds tracebacks)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from transforms.errors import MLFSError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", "-r", default=".", metavar="DIR", help="feature repository (default: .)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mlfs", description="Define features once; run them on every engine.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the engines' own logs (Spark's and Flink's warnings) here instead of in <work>/logs",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create an example feature repository with data")
    init.add_argument("directory", type=Path)
    init.add_argument("--as-of", type=_timestamp, help="end of the generated data (default: now)")
    init.add_argument("--events", type=int, default=20_000, help="history events to generate")
    init.add_argument("--force", action="store_true", help="write into a non-empty directory")
    init.add_argument(
        "--with-embeddings",
        action="store_true",
        help="add a view that embeds failure reasons with all-MiniLM-L6-v2 (loads the model in every job)",
    )
    init.add_argument(
        "--with-joins",
        action="store_true",
        help="add a refunds source and two views with joins",
    )

    plan = commands.add_parser("plan", help="show what `apply` would change in the registry")
    _repo_option(plan)
    apply = commands.add_parser("apply", help="validate the repository and register it")
    _repo_option(apply)

    backfill = commands.add_parser("backfill", help="compute feature history and latest values")
    backfill.add_argument("views", nargs="*", metavar="VIEW", help="views to run (default: all)")
    backfill.add_argument("--start", type=_timestamp, help="first feature time (default: all history)")
    backfill.add_argument("--end", type=_timestamp, help="end of the range, exclusive (default: now)")
    backfill.add_argument(
        "--engine",
        metavar="ENGINE",
        help="embedded, spark or reference (default: mlfs.backfill.engine, else spark with a Spark master, "
        "else embedded)",
    )
    backfill.add_argument(
        "--spark-master", metavar="URL", help="Spark master; selects Spark (default: local[*])"
    )
    backfill.add_argument(
        "--chunk-days",
        type=int,
        metavar="N",
        help="Spark: resumable chunks of N days (default: chunks by volume, mlfs.backfill.chunk_rows rows)",
    )
    backfill.add_argument("--restart", action="store_true", help="discard the progress of an interrupted run")
    backfill.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    _repo_option(backfill)

    stream = commands.add_parser("serve-stream", help="run views continuously on Flink")
    stream.add_argument("views", nargs="*", metavar="VIEW", help="views to run (default: all)")
    stream.add_argument("--flink-master", metavar="HOST:PORT", help="remote JobManager (default: local)")
    stream.add_argument(
        "--checkpoint-dir", type=Path, metavar="DIR", help="default: <work>/stream/checkpoints"
    )
    stream.add_argument(
        "--checkpoint-interval", type=_positive, metavar="SECONDS", help="between checkpoints (default: 10)"
    )
    stream.add_argument(
        "--for", dest="duration", type=_positive, metavar="SECONDS", help="stop after this long"
    )
    stream.add_argument("--parallelism", type=int, metavar="N", help="Flink parallelism (default: 2)")
    stream.add_argument("--fresh", action="store_true", help="ignore earlier checkpoints and savepoints")
    stream.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="Prometheus /metrics port (default 9464, 0: any free)",
    )
    stream.add_argument("--no-metrics", action="store_true", help="serve no Prometheus endpoint")
    stream.add_argument(
        "--metrics-host", metavar="HOST", help="address /metrics listens on (default 127.0.0.1; 0.0.0.0: all)"
    )
    stream.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        help="restarts after failures before serve-stream stops with the cause (default: 10)",
    )
    stream.add_argument(
        "--application",
        action="store_true",
        help="submit the job to the Flink cluster this runs in (application mode: Flink's PythonDriver)",
    )
    stream.add_argument(
        "--attach",
        action="store_true",
        help="supervise the job the cluster at --flink-master runs (metrics, compaction); leave it running",
    )
    _repo_option(stream)

    verify = commands.add_parser("verify", help="run a view on every engine over a sample and diff the rows")
    verify.add_argument("view")
    verify.add_argument(
        "--events", type=Path, metavar="FILE", help="JSON lines or Parquet (default: history)"
    )
    verify.add_argument("--sample", type=int, default=2000, metavar="N", help="events to use (default: 2000)")
    verify.add_argument(
        "--engines",
        default="embedded,spark,flink",
        metavar="LIST",
        help="compared with the reference (default: embedded,spark,flink)",
    )
    _repo_option(verify)

    consistency = commands.add_parser(
        "consistency", help="compare a sample of a view's keys online with the offline store"
    )
    consistency.add_argument("view")
    consistency.add_argument(
        "--sample", type=int, default=100, metavar="N", help="keys to compare (default: 100)"
    )
    consistency.add_argument("--seed", type=int, default=0, help="which keys the sample takes (default: 0)")
    consistency.add_argument(
        "--events",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="the source's events in arrival order, for the reference engine "
        "(default: the view's history files; name the stream's files after them to judge its rows)",
    )
    consistency.add_argument(
        "--no-reference", action="store_true", help="compare the stores only, without the reference engine"
    )
    _repo_option(consistency)

    train = commands.add_parser("train", help="train one model per key over a view's offline rows (Spark)")
    train.add_argument("name", help="the model set's name (its directory and registry entry)")
    train.add_argument("--view", required=True, help="the view whose offline rows to train on")
    train.add_argument("--key", required=True, help="one model per value of this column (a key or segment)")
    train.add_argument("--features", required=True, metavar="A,B,...", help="input columns")
    train.add_argument("--label", required=True, help="target column (logistic: positive when > 0)")
    train.add_argument("--estimator", default="logistic", choices=["logistic", "linear"])
    train.add_argument(
        "--end", type=_timestamp, help="train on rows before this time; models are live from it"
    )
    train.add_argument("--model-dir", type=Path, metavar="DIR", help="default: <repo>/data/models")
    train.add_argument(
        "--min-rows", type=int, default=10, metavar="N", help="fewest rows to fit a key's model"
    )
    train.add_argument("--spark-master", metavar="URL", help="Spark master (default: local[*])")
    _repo_option(train)

    from registry.cli import add_commands

    add_commands(commands, _repo_option)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    from featurestore.scaffold import init_repo

    if args.events < 100:
        raise MLFSError("--events must be at least 100")
    counts = init_repo(
        args.directory, args.as_of, args.force, args.events, args.with_embeddings, args.with_joins
    )
    print(
        f"Created feature repository {args.directory} "
        f"({counts['history']} history events, {counts['stream']} stream lines).\n"
        f"Next: cd {args.directory} && mlfs apply && mlfs backfill && python read_features.py"
    )
    return 0


def _plan(args: argparse.Namespace, apply: bool) -> int:
    from featurestore.repo import load_repo
    from registry.apply import apply_repo, plan_repo

    repo = load_repo(args.repo)
    result = apply_repo(repo) if apply else plan_repo(repo)
    for change in result.changes:
        print(change.line())
    if apply:
        print(f"Applied {len(repo.views)} view(s) to project {repo.settings.project!r}.")
    elif not result.has_changes:
        print("No changes.")
    return 0


def _engine_logs(repo: Any) -> None:
    """The engines this command starts log to ``<work>/logs`` (``transforms.enginelogs``)."""
    from transforms.enginelogs import LOG_DIR_ENV

    os.environ.setdefault(LOG_DIR_ENV, str(repo.settings.work_path / "logs"))


def _progress_factory() -> Callable[[str, int | None, str], Callable[[int], None]]:
    from tqdm import tqdm

    def make(view: str, total: int | None, unit: str) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=view, unit=" " + unit, disable=None, leave=False)
        return bar.update

    return make


def cmd_backfill(args: argparse.Namespace) -> int:
    from backfill.runner import plan_backfill, run_backfill
    from featurestore.repo import load_repo

    repo = load_repo(args.repo)
    _engine_logs(repo)
    plan = plan_backfill(
        repo, args.views, args.start, args.end, args.engine, args.spark_master, args.chunk_days
    )
    if args.dry_run:
        print("\n".join(plan.describe()))
        return 0
    started = time.monotonic()
    reports = run_backfill(repo, plan, _progress_factory(), restart=args.restart)
    for r in reports:
        print(
            f"{r.view}: {r.counts.summary()}; offline {r.offline_rows} rows in "
            f"{r.partitions} partition(s); online {r.online_written} keys written"
            + (f", {r.online_skipped} kept (newer)" if r.online_skipped else "")
            + (f"; {r.chunks_skipped} chunk(s) already done" if r.chunks_skipped else "")
            + (f"; {r.chunks_empty} chunk(s) of empty history" if r.chunks_empty else "")
            + f"; {r.seconds:.1f}s"
        )
        for source, counts in sorted(r.source_counts.items()):
            print(f"  joined source {source}: {counts.source_summary()}")
        if r.dead_letter_file:
            print(f"  dead letters: {r.dead_letter_file}")
    print(f"Backfilled {len(reports)} view(s) in {time.monotonic() - started:.1f}s.")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from featurestore.repo import load_repo
    from featurestore.training import train_per_key

    repo = load_repo(args.repo)
    _engine_logs(repo)
    report = train_per_key(
        repo,
        args.name,
        args.view,
        key=args.key,
        features=[f.strip() for f in args.features.split(",") if f.strip()],
        label=args.label,
        estimator=args.estimator,
        end=args.end,
        model_dir=args.model_dir,
        spark_master=args.spark_master,
        min_rows=args.min_rows,
    )
    for key, why in sorted(report.skipped.items()):
        print(f"  skipped {key}: {why}")
    print(f"{report.summary()} ({report.seconds:.1f}s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from featurestore.repo import load_repo
    from featurestore.verify import load_sample, report_lines, verify_view
    from transforms.engines.base import VERIFY_ENGINES

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in VERIFY_ENGINES]
    if unknown or not engines:
        name = unknown[0] if unknown else "(none)"
        raise MLFSError(f"--engines: unknown engine {name!r} (choose from {', '.join(VERIFY_ENGINES)})")
    if args.sample < 1:
        raise MLFSError("--sample must be at least 1")
    repo = load_repo(args.repo)
    _engine_logs(repo)
    view = repo.view(args.view)
    sample = load_sample(repo, view, args.events, args.sample)
    runs = verify_view(repo, view, sample, engines, lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(report_lines(view.name, runs)))
    return 1 if any(run.problems for run in runs) else 0


def cmd_consistency(args: argparse.Namespace) -> int:
    from featurestore.consistency import check_consistency
    from featurestore.consistency_reference import events_at_hand
    from featurestore.repo import load_repo

    repo = load_repo(args.repo)
    events = None if args.no_reference else args.events or events_at_hand(repo, repo.view(args.view))
    missing = [str(f) for f in events or [] if not f.is_file()]
    if missing:
        raise MLFSError(f"no such events file: {', '.join(missing)}")
    report = check_consistency(repo, args.view, args.sample, args.seed, events=events)
    print(report.summary())
    if report.reference:
        print(f"  ({report.reference})")
    for mismatch in report.mismatches:
        print(mismatch.line())
    return 1 if report.mismatches else 0


def _port(flag: int | None, configured: object) -> int:
    port = flag if flag is not None else int(str(configured))
    if not 0 <= port <= 65535:
        raise MLFSError(f"metrics port must be between 0 and 65535, got {port}")
    return port


def _every(name: str, value: object, default: float) -> float | None:
    """An ``mlfs.flink`` interval ``name`` in seconds (0: never, None)."""
    if value is None:
        return default
    try:
        seconds = float(str(value))
    except ValueError:
        raise MLFSError(f"{name} must be a number of seconds, got {value!r}") from None
    return seconds or None


def _whole(name: str, value: object) -> int:
    """A whole number of at least 0 (a flag or ``mlfs.flink`` key named ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MLFSError(f"{name} must be a whole number of at least 0, got {value!r}")
    return value


def _seconds(name: str, value: object) -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise MLFSError(f"{name} must be a number of seconds of at least 0, got {value!r}")
    return seconds


def cmd_serve_stream(args: argparse.Namespace) -> int:
    from featurestore.repo import load_repo
    from featurestore.stream.service import (
        StreamOptions,
        attach_stream,
        connector_jars,
        run_application,
        serve_stream,
    )

    repo = load_repo(args.repo)
    _engine_logs(repo)
    flink = repo.settings.mlfs.get("flink") or {}
    options = StreamOptions(
        views=list(args.views),
        master=args.flink_master or flink.get("master"),
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_s=args.checkpoint_interval or float(flink.get("checkpoint_interval_s", 10)),
        duration_s=args.duration,
        parallelism=args.parallelism or int(flink.get("parallelism", 2)),
        poll_ms=int(flink.get("poll_interval_ms", 1000)),
        compact_every_s=_every("mlfs.flink.compact_every_s", flink.get("compact_every_s"), 300.0),
        compact_min_files=flink.get("compact_min_files", StreamOptions.compact_min_files),
        consistency_every_s=_every("mlfs.flink.consistency_every_s", flink.get("consistency_every_s"), 300.0),
        consistency_sample=_whole("mlfs.flink.consistency_sample", flink.get("consistency_sample", 20)),
        fresh=args.fresh,
        metrics_port=None if args.no_metrics else _port(args.metrics_port, flink.get("metrics_port", 9464)),
        metrics_host=str(args.metrics_host or flink.get("metrics_host") or StreamOptions.metrics_host),
        flink_config={str(k): str(v) for k, v in (flink.get("config") or {}).items()},
        jars=connector_jars([str(j) for j in flink.get("jars") or []], repo.settings.repo_path),
        max_restarts=_whole(
            "--max-restarts",
            args.max_restarts if args.max_restarts is not None else flink.get("max_restarts", 10),
        ),
        restart_delay_s=_seconds("mlfs.flink.restart_delay_s", flink.get("restart_delay_s", 5)),
    )
    if options.parallelism < 1:
        raise MLFSError("--parallelism must be at least 1")
    if not isinstance(options.compact_min_files, int) or options.compact_min_files < 2:
        raise MLFSError(
            f"mlfs.flink.compact_min_files must be a whole number of at least 2, "
            f"got {options.compact_min_files!r}"
        )
    if args.attach:
        if args.application:
            raise MLFSError("--attach and --application: one or the other")
        attach_stream(repo, options, lambda line: print(line, flush=True))
        return 0
    if args.application:
        if args.flink_master:
            raise MLFSError("--application submits to the cluster it runs in: no --flink-master")
        run_application(repo, options, lambda line: print(line, flush=True))
        return 0
    serve_stream(repo, options, lambda line: print(line, flush=True))
    return 0


def _registry(args: argparse.Namespace) -> int:
    from registry.cli import run

    return run(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init,
    "plan": lambda a: _plan(a, apply=False),
    "apply": lambda a: _plan(a, apply=True),
    "backfill": cmd_backfill,
    "serve-stream": cmd_serve_stream,
    "verify": cmd_verify,
    "consistency": cmd_consistency,
    "train": cmd_train,
    "registry": lambda a: _registry(a),
}


def main(argv: Sequence[str] | None = None) -> int:
    from transforms import enginelogs

    args = build_parser().parse_args(argv)
    environment = {name: os.environ.get(name) for name in (enginelogs.VERBOSE_ENV, enginelogs.LOG_DIR_ENV)}
    if args.verbose:
        os.environ[enginelogs.VERBOSE_ENV] = "1"
    logs_before = len(enginelogs.written())
    code = 1
    try:
        code = COMMANDS[args.command](args)
        return code
    except MLFSError as err:
        print(f"mlfs: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlfs: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("MLFS_DEBUG"):
            raise
        print(
            f"mlfs: internal error: {type(err).__name__}: {err} (set MLFS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if code == 0:  # the engines' own logs, where they went (beside the output; errors stay one line)
            for path in enginelogs.written()[logs_before:]:
                print(f"engine log: {path}", file=sys.stderr)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
