"""Command line: ``python -m harness {run,reparse,compare,baseline,table}`` (also ``clip-bench``).

Exit status:

- 0: nothing failed or regressed.
- 1: a variant failed, or a metric regressed.
- 2: a harness or spec error. A run in which nothing ran counts as one.
- 130: the run was interrupted by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from harness.errors import HarnessError

logger = logging.getLogger("harness")

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.handler(args)
    except HarnessError as error:
        logger.error("%s", error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Ctrl-C outside a variant, e.g. during the calibration; nothing to write yet.
        logger.warning("interrupted")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Run benchmark specs, compare runs with baselines and build result tables.",
    )
    commands = parser.add_subparsers(title="commands")
    _add_run_parser(commands)
    _add_reparse_parser(commands)
    _add_compare_parser(commands)
    _add_baseline_parser(commands)
    _add_table_parser(commands)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More log output.")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="Less log output.")


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="Run the benchmarks of one or more spec files.")
    _add_selection_arguments(run)
    _add_execution_arguments(run)
    _add_verbosity(run)
    run.set_defaults(handler=command_run)


def _add_selection_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--spec",
        type=Path,
        nargs="+",
        action="extend",
        help="Benchmark spec YAML file(s) (default: benchmarks.yml).",
    )
    run.add_argument(
        "--benchmark",
        nargs="+",
        action="extend",
        default=[],
        help="Run only these benchmarks (convergence ones included).",
    )
    run.add_argument("--filter", help="Run only variants whose name matches this regex.")
    run.add_argument(
        "--tag",
        nargs="+",
        action="extend",
        default=[],
        help="Run only benchmarks with one of these tags.",
    )
    run.add_argument(
        "--include-convergence",
        action="store_true",
        help="Also run convergence benchmarks ('_conv' in the name).",
    )
    run.add_argument("--platform", help="Platform id to record instead of the detected one.")


def _add_execution_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--timeout",
        type=positive_number,
        help="Timeout in seconds for entries that set no 'timeout' of their own.",
    )
    run.add_argument(
        "--repeat", type=positive_int, help="Repeats per variant, replacing the spec's 'repeat'."
    )
    run.add_argument(
        "--log-dir", type=Path, help="Folder for logs and results (default: runs/<UTC time>)."
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the planned variants and commands without running them.",
    )
    run.add_argument(
        "--stop-on-error",
        action="store_true",
        help="Stop at the first variant that does not end ok.",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="Keep the finished repeats in --log-dir and run only the rest.",
    )
    run.add_argument(
        "--stream",
        action="store_true",
        help="Echo each variant's output to the console while it runs.",
    )
    run.add_argument(
        "--calibration-seconds",
        type=float,
        default=1.0,
        help="Duration of the calibration matmul in seconds; 0 skips it.",
    )


def _add_reparse_parser(commands: argparse._SubParsersAction) -> None:
    reparse = commands.add_parser("reparse", help="Extract metrics again from a run's saved logs.")
    reparse.add_argument("log_dir", type=Path, metavar="LOGDIR", help="Log folder of a run.")
    reparse.add_argument(
        "--spec",
        type=Path,
        nargs="+",
        action="extend",
        help="Take the metric definitions from these specs, not the records.",
    )
    _add_verbosity(reparse)
    reparse.set_defaults(handler=command_reparse)


def _add_compare_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="Compare a run with its platform's baseline.")
    compare.add_argument("run", type=Path, metavar="RUN", help="Log folder or results file.")
    compare.add_argument(
        "--baseline", type=Path, help="Baseline file (default: <baseline dir>/<platform>.csv)."
    )
    _add_baseline_location(compare)
    compare.add_argument(
        "--report", type=Path, help="Markdown report path (default: compare.md beside the results)."
    )
    compare.add_argument(
        "--alpha",
        type=significance_level,
        default=0.05,
        help="Significance level of the Mann-Whitney U test used with repeats (default 0.05).",
    )
    compare.add_argument(
        "--missing-baseline-ok",
        action="store_true",
        help="Exit 0 with a message when the platform has no baseline yet, instead of 2.",
    )
    _add_verbosity(compare)
    compare.set_defaults(handler=command_compare)


def _add_baseline_parser(commands: argparse._SubParsersAction) -> None:
    baseline = commands.add_parser("baseline", help="Manage baselines.")
    actions = baseline.add_subparsers(title="actions", required=True)
    promote = actions.add_parser("promote", help="Store a run as its platform's baseline.")
    promote.add_argument("run", type=Path, metavar="RUN", help="Log folder or results file.")
    _add_baseline_location(promote)
    _add_verbosity(promote)
    promote.set_defaults(handler=command_promote)


def _add_baseline_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        help="Baseline folder (default: results/baselines in the repository).",
    )
    parser.add_argument("--platform", help="Platform id (default: the one the run recorded).")


def _add_table_parser(commands: argparse._SubParsersAction) -> None:
    table = commands.add_parser("table", help="Write performance tables, plots and history.")
    table.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="Log folders or results files; the last one fills the table.",
    )
    table.add_argument(
        "--out", type=Path, help="Output folder (default: results/tables in the repository)."
    )
    table.add_argument("--metric", default="throughput", help="Metric of the history table.")
    table.add_argument("--no-plot", action="store_true", help="Skip the throughput plots.")
    _add_verbosity(table)
    table.set_defaults(handler=command_table)


class _CurrentStderrHandler(logging.StreamHandler):
    """Write to whatever sys.stderr is now, so a rich progress bar can redirect the logs."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(verbosity: int) -> None:
    """Log to stderr at INFO; each -v lowers the level one step, each -q raises it."""
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    level = levels[min(max(1 - verbosity, 0), len(levels) - 1)]
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    # Replace only our own handler, so handlers that others installed (pytest's) stay.
    for previous in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)


def positive_number(text: str) -> float:
    """argparse type for options that must be greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def significance_level(text: str) -> float:
    value = positive_number(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} must be below 1, e.g. 0.05")
    return value


def positive_int(text: str) -> int:
    value = positive_number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text} is not a whole number")
    return int(value)


def command_run(args: argparse.Namespace) -> int:
    from harness.plan import Selection
    from harness.progress import make_progress
    from harness.session import RunOptions, run_benchmarks

    if args.resume and args.log_dir is None:
        raise HarnessError("--resume needs the --log-dir of the run to continue")
    log_dir = args.log_dir or Path("runs") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    options = RunOptions(
        spec_paths=args.spec or [Path("benchmarks.yml")],
        log_dir=log_dir,
        selection=Selection(args.benchmark, args.filter, args.tag, args.include_convergence),
        timeout=args.timeout,
        repeat=args.repeat,
        dry_run=args.dry_run,
        stop_on_error=args.stop_on_error,
        resume=args.resume,
        stream=args.stream,
        platform=args.platform,
        calibration_seconds=args.calibration_seconds,
    )
    with _sigterm_as_interrupt():
        outcome = run_benchmarks(options, make_progress())
    if args.dry_run:
        for planned in outcome.planned:
            state = f"skipped: {planned.skip_reason}" if planned.skip_reason else "run"
            print(
                f"{planned.variant.name} [repeat {planned.repeat}] {state}\n    {planned.command}"
            )
        return EXIT_OK
    logger.info("results in %s", log_dir)
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return _status_exit([record.status for record in outcome.records])


def _status_exit(statuses: list[str]) -> int:
    counts = Counter(statuses)
    logger.info("statuses: %s", ", ".join(f"{count} {name}" for name, count in counts.items()))
    if not statuses or set(counts) == {"skipped"}:
        logger.error("nothing ran: every selected variant was skipped")
        return EXIT_ERROR
    return EXIT_FAILED if set(counts) - {"ok", "skipped"} else EXIT_OK


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a cancelled CI job) like Ctrl-C, so running variants are killed."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Callable | int | None = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_reparse(args: argparse.Namespace) -> int:
    from harness.session import reparse

    records = reparse(args.log_dir, args.spec)
    logger.info("rewrote %d records and the results in %s", len(records), args.log_dir)
    return _status_exit([record.status for record in records])


def command_compare(args: argparse.Namespace) -> int:
    from harness.baseline import baseline_path, default_baseline_dir, load_baseline, run_platform
    from harness.compare import compare_runs, exit_status
    from harness.report import print_verdicts, render_markdown
    from harness.results import read_run

    current, info = read_run(args.run)
    platform = run_platform(current, args.platform, args.run)
    path = args.baseline or baseline_path(args.baseline_dir or default_baseline_dir(), platform)
    if args.missing_baseline_ok and not path.exists():
        logger.warning(
            "no baseline for platform '%s' at %s, so nothing was compared; store this run as "
            "the baseline with `python -m harness baseline promote %s`", platform, path, args.run
        )
        return EXIT_OK
    verdicts = compare_runs(current, load_baseline(path, platform), info, args.alpha)
    print_verdicts(verdicts)
    report = args.report or _default_report_path(args.run)
    report.write_text(render_markdown(verdicts, str(args.run), str(path)), encoding="utf-8")
    logger.info("markdown report in %s", report)
    return exit_status(verdicts)


def _default_report_path(run: Path) -> Path:
    return run / "compare.md" if run.is_dir() else run.with_name(run.stem + "_compare.md")


def command_promote(args: argparse.Namespace) -> int:
    from harness.baseline import default_baseline_dir, promote

    path = promote(args.run, args.baseline_dir or default_baseline_dir(), args.platform)
    logger.info("baseline written to %s", path)
    return EXIT_OK


def command_table(args: argparse.Namespace) -> int:
    from harness.baseline import repository_root
    from harness.results import read_run
    from harness.tables import (
        history_table,
        performance_table,
        plot_throughput,
        print_table,
        write_table,
    )

    runs = [read_run(path)[0] for path in args.runs]
    out = args.out or repository_root() / "results" / "tables"
    performance = performance_table(runs[-1])
    print_table(performance, f"Performance: {args.runs[-1]}")
    written = write_table(performance, out, "performance")
    if len(runs) > 1:
        written += write_table(history_table(runs, args.metric), out, "history")
    if not args.no_plot:
        written += plot_throughput(runs[-1], out)
    logger.info("wrote %s", ", ".join(str(path) for path in written))
    return EXIT_OK
