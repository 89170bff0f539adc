"""The orchestrator of ``run`` and ``reparse``: spec -> plan -> runner -> metrics -> results."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.fingerprint import Machine, calibrate_gflops, detect_machine, git_state
from harness.metrics import DerivedSpec, MetricSpec, extract_metrics, parse_derived, parse_metric
from harness.plan import PlannedRun, Selection, plan_runs, select_benchmarks
from harness.progress import Progress
from harness.records import (
    RECORD_FILE,
    RunRecord,
    decide_status,
    extraction_status,
    load_record,
    load_records,
    read_log_text,
    repeat_folder,
    save_record,
)
from harness.results import write_results
from harness.runner import run_command
from harness.spec import Benchmark, load_specs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Options of the ``run`` command."""

    spec_paths: list[Path]
    log_dir: Path
    selection: Selection = field(default_factory=Selection)
    timeout: float | None = None
    repeat: int | None = None
    dry_run: bool = False
    stop_on_error: bool = False
    resume: bool = False
    stream: bool = False
    platform: str | None = None
    calibration_seconds: float = 1.0


@dataclass
class RunOutcome:
    """The records of a run, and whether it ended early."""

    records: list[RunRecord] = field(default_factory=list)
    planned: list[PlannedRun] = field(default_factory=list)
    interrupted: bool = False
    stopped_on_error: bool = False


@dataclass(frozen=True)
class RunContext:
    """Facts about this session that every record carries."""

    machine: Machine
    git_commit: str
    git_dirty: bool | None
    calibration_gflops: float | None


def run_benchmarks(options: RunOptions, progress: Progress) -> RunOutcome:
    """Run the selected variants and write the results, also after Ctrl-C.

    Spec errors are raised before anything runs. Ctrl-C stops the current variant,
    which is not recorded, and the results of the finished ones are still written.
    """
    specs = load_specs(options.spec_paths)
    machine = detect_machine(options.platform)
    benchmarks = select_benchmarks(specs, options.selection)
    planned = plan_runs(
        benchmarks, options.selection, machine.platform_kind, os.environ, options.repeat
    )
    outcome = RunOutcome(planned=planned)
    if options.dry_run:
        return outcome
    _prepare_log_dir(options.log_dir, options.resume)
    commit, dirty = git_state(options.spec_paths[0].resolve().parent)
    logger.info("platform %s; measuring the calibration matmul", machine.platform_id)
    context = RunContext(machine, commit, dirty, calibrate_gflops(options.calibration_seconds))

    progress.start(len(planned))
    try:
        for run in planned:
            record = _previous_record(options, run) or _execute(run, options, context, progress)
            outcome.records.append(record)
            if options.stop_on_error and record.status not in ("ok", "skipped"):
                logger.error(
                    "stopping after %s: %s (--stop-on-error)", record.variant, record.reason
                )
                outcome.stopped_on_error = True
                break
    except KeyboardInterrupt:
        outcome.interrupted = True
        logger.warning("interrupted; writing the results of %d finished runs", len(outcome.records))
    finally:
        progress.close()
    write_results(options.log_dir, outcome.records)
    return outcome


def _prepare_log_dir(log_dir: Path, resume: bool) -> None:
    if not resume and any(log_dir.glob(f"*/repeat_*/{RECORD_FILE}")):
        raise HarnessError(
            f"log folder {log_dir} already contains results; pass --resume to continue that "
            "run, or choose another --log-dir"
        )
    log_dir.mkdir(parents=True, exist_ok=True)


def _previous_record(options: RunOptions, run: PlannedRun) -> RunRecord | None:
    """Return the record of an identical finished repeat when resuming, else None.

    Skipped variants are planned again, because their reason (an unset variable, for
    example) may have been fixed.
    """
    path = repeat_folder(options.log_dir, run.variant.name, run.repeat) / RECORD_FILE
    if not options.resume or not path.exists():
        return None
    record = load_record(path)
    if record.status == "skipped":
        return None
    if record.command != run.command:
        logger.warning(
            "%s: the command changed since the saved run; running it again", run.variant.name
        )
        return None
    logger.info("%s repeat %d: already done (%s), kept", record.variant, run.repeat, record.status)
    return record


def _execute(
    run: PlannedRun, options: RunOptions, context: RunContext, progress: Progress
) -> RunRecord:
    folder = repeat_folder(options.log_dir, run.variant.name, run.repeat)
    record = _new_record(run, context)
    if run.skip_reason:
        logger.info("%s: skipped, %s", run.variant.name, run.skip_reason)
    else:
        progress.begin(f"{run.variant.name} (repeat {run.repeat})")
        _measure(run, options, folder, record)
    save_record(folder, record)
    progress.finish(run.variant.name, record.status, record.duration_s)
    if record.status not in ("ok", "skipped"):
        logger.error(
            "%s: %s: %s (logs in %s)", record.variant, record.status, record.reason, folder
        )
    return record


def _new_record(run: PlannedRun, context: RunContext) -> RunRecord:
    """Start the record of a planned repeat: skipped, until it is measured."""
    benchmark = run.variant.benchmark
    return RunRecord(
        benchmark=benchmark.name,
        variant=run.variant.name,
        repeat=run.repeat,
        params=dict(run.variant.params),
        status="skipped",
        reason=run.skip_reason or "",
        command=run.command,
        cwd=str(benchmark.workdir),
        metric_specs=metric_specs(benchmark),
        git_commit=context.git_commit,
        git_dirty=context.git_dirty,
        calibration_gflops=context.calibration_gflops,
        machine=context.machine.to_dict(),
        spec_file=str(benchmark.spec_file),
        description=benchmark.description,
        tags=list(benchmark.tags),
        spec_extra=benchmark.extra,
    )


def _measure(run: PlannedRun, options: RunOptions, folder: Path, record: RunRecord) -> None:
    """Run the command, read its metrics and fill in the record's outcome."""
    benchmark = run.variant.benchmark
    timeout = benchmark.timeout or options.timeout
    execution = run_command(
        run.argv,
        benchmark.workdir,
        run.env,
        folder / "stdout.log",
        folder / "stderr.log",
        timeout=timeout,
        stream=options.stream,
    )
    extraction = extract_metrics(
        read_log_text(folder), benchmark.metrics, benchmark.derived, run.variant.params
    )
    record.status, record.reason = decide_status(execution, extraction, timeout)
    record.exit_code, record.metrics = execution.exit_code, extraction.values
    record.duration_s, record.start_time = execution.duration_s, execution.start_time
    record.peak_rss_mb, record.cpu_time_s = execution.peak_rss_mb, execution.cpu_time_s


def metric_specs(benchmark: Benchmark) -> dict[str, dict[str, object]]:
    """Return the metric definitions that a record keeps for ``reparse``."""
    return {
        "data": {metric.name: metric.to_dict() for metric in benchmark.metrics},
        "derived": {item.name: item.to_dict() for item in benchmark.derived},
        "labels": dict(benchmark.labels),
    }


def reparse(log_dir: Path, spec_paths: list[Path] | None = None) -> list[RunRecord]:
    """Extract the metrics again from the saved logs and rewrite every record and result file.

    With ``spec_paths`` the metric definitions come from those specs (to apply a fixed
    regexp, say); otherwise each record's saved definitions are used. Timeouts,
    skipped variants and non-zero exit codes keep their status.
    """
    specs = load_specs(spec_paths) if spec_paths else None
    records = load_records(log_dir)
    if not records:
        raise HarnessError(f"{log_dir} contains no variant records; check the log folder")
    for record in records:
        benchmark = specs.benchmarks.get(record.benchmark) if specs else None
        if benchmark is not None:
            record.metric_specs = metric_specs(benchmark)
        if record.status != "skipped":
            _reextract(log_dir, record)
    write_results(log_dir, records)
    return records


def _reextract(log_dir: Path, record: RunRecord) -> None:
    folder = repeat_folder(log_dir, record.variant, record.repeat)
    metrics, derived = _specs_from_record(record)
    extraction = extract_metrics(read_log_text(folder), metrics, derived, record.params)
    record.metrics = extraction.values
    if record.status != "timeout" and record.exit_code == 0:
        record.status, record.reason = extraction_status(extraction)
    save_record(folder, record)


def _specs_from_record(record: RunRecord) -> tuple[list[MetricSpec], list[DerivedSpec]]:
    where = f"record of {record.variant}"
    data = record.metric_specs.get("data", {})
    metrics = [parse_metric(name, raw, where) for name, raw in data.items()]
    known = set(record.params) | set(data)
    derived = []
    for name, raw in record.metric_specs.get("derived", {}).items():
        derived.append(parse_derived(name, raw, where, known))
        known.add(name)
    return metrics, derived
