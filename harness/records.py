"""Per-variant records in the log folder, and the status of a finished variant.

Layout of a log folder::

    <log dir>/<variant>/repeat_<r>/stdout.log
    <log dir>/<variant>/repeat_<r>/stderr.log
    <log dir>/<variant>/repeat_<r>/record.json
    <log dir>/results.csv, results.json, junit.xml

``record.json`` is written when a repeat has finished, so ``--resume`` treats a repeat
with a record as done and ``reparse`` finds the logs and metric definitions there.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.metrics import Extraction
from harness.runner import Execution

logger = logging.getLogger(__name__)

STATUSES = ("ok", "failed", "timeout", "no-metric", "skipped")
RECORD_FILE = "record.json"
UNSAFE_PATH_CHARACTERS = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass
class RunRecord:
    """Everything known about one repeat of one variant."""

    benchmark: str
    variant: str
    repeat: int
    params: dict[str, str]
    status: str
    reason: str = ""
    exit_code: int | None = None
    duration_s: float | None = None
    start_time: str = ""
    command: str = ""
    cwd: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    metric_specs: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    cpu_time_s: float | None = None
    git_commit: str = ""
    git_dirty: bool | None = None
    calibration_gflops: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    spec_file: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    # Spec keys the harness records but does not act on, such as pre_run_commands.
    spec_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.status in STATUSES, f"unknown status {self.status!r}"


def repeat_folder(log_dir: Path, variant: str, repeat: int) -> Path:
    """Return the folder of one repeat; characters unsafe in paths become '_'."""
    return log_dir / UNSAFE_PATH_CHARACTERS.sub("_", variant) / f"repeat_{repeat}"


def save_record(folder: Path, record: RunRecord) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / (RECORD_FILE + ".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=1), encoding="utf-8")
    temporary.replace(folder / RECORD_FILE)  # atomic, so a crash leaves no half record


def load_record(path: Path) -> RunRecord:
    try:
        return RunRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AssertionError) as error:
        raise HarnessError(
            f"cannot read the variant record {path}: {error}; delete its folder to run it again"
        ) from None


def load_records(log_dir: Path) -> list[RunRecord]:
    """Return every finished repeat in a log folder, ordered by start time."""
    if not log_dir.is_dir():
        raise HarnessError(f"log folder {log_dir} does not exist; pass the --log-dir of a run")
    records = [load_record(path) for path in sorted(log_dir.glob(f"*/repeat_*/{RECORD_FILE}"))]
    return sorted(records, key=lambda record: (record.start_time, record.variant, record.repeat))


def decide_status(
    execution: Execution, extraction: Extraction, timeout: float | None
) -> tuple[str, str]:
    """Return (status, reason) for a finished repeat; the first problem found wins."""
    if execution.timed_out:
        return "timeout", f"timed out after {timeout:g} s"
    if execution.error:
        return "failed", execution.error
    if execution.exit_code != 0:
        return "failed", describe_exit_code(execution.exit_code)
    return extraction_status(extraction)


def extraction_status(extraction: Extraction) -> tuple[str, str]:
    """Return (status, reason) of a repeat that exited with code 0."""
    if extraction.failures:
        return "failed", "; ".join(extraction.failures)
    if extraction.problems:
        return "no-metric", "; ".join(extraction.problems)
    return "ok", ""


def describe_exit_code(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def read_log_text(folder: Path) -> str:
    """Return stdout then stderr of a repeat as text; bytes that are not UTF-8 become U+FFFD."""
    parts = []
    for name in ("stdout.log", "stderr.log"):
        path = folder / name
        if path.exists():
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)
