"""Baselines: one results CSV per platform under ``results/baselines/<platform>.csv``.

A baseline keeps every column of the run it came from, so it records the machine
fingerprint (``machine.*``), the git commit and the dirty flag of that run, plus
``baseline_source`` and ``promoted_at``.
"""

from __future__ import annotations

import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.records import UNSAFE_PATH_CHARACTERS
from harness.results import MACHINE, read_run

logger = logging.getLogger(__name__)

BASELINE_FOLDER = Path("results") / "baselines"


def repository_root() -> Path:
    """Return the git repository that contains the working directory, else the directory."""
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return Path.cwd()
    return Path(completed.stdout.strip()) if completed.returncode == 0 else Path.cwd()


def default_baseline_dir() -> Path:
    return repository_root() / BASELINE_FOLDER


def baseline_path(folder: Path, platform: str) -> Path:
    return folder / f"{UNSAFE_PATH_CHARACTERS.sub('_', platform)}.csv"


def run_platform(frame: pd.DataFrame, override: str | None, source: Path) -> str:
    """Return ``override`` or the single platform id recorded in a run."""
    if override:
        return override
    column = MACHINE + "platform_id"
    platforms = sorted(frame[column].dropna().unique()) if column in frame else []
    if len(platforms) != 1:
        found = ", ".join(map(str, platforms)) or "none"
        raise HarnessError(
            f"{source} records platform ids {found}; pass --platform to choose the baseline"
        )
    return str(platforms[0])


def load_baseline(path: Path, platform: str) -> pd.DataFrame:
    """Read a baseline; a missing one raises an error that explains how to create it."""
    if not path.exists():
        raise HarnessError(
            f"no baseline for platform '{platform}' at {path}; create one from a good run "
            f"with `python -m harness baseline promote RUN --platform {platform}`, or pass "
            "--baseline FILE"
        )
    frame, _ = read_run(path)
    return frame


def promote(run: Path, folder: Path, platform: str | None = None) -> Path:
    """Store a run's results as the baseline of its platform; return the baseline path."""
    frame, _ = read_run(run)
    if not (frame["status"] == "ok").any():
        raise HarnessError(f"{run} has no variant with status ok; promote a run that passed")
    platform = run_platform(frame, platform, run)
    frame = frame.assign(
        baseline_source=str(run.resolve()),
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = baseline_path(folder, platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        logger.info("replacing the previous baseline %s", path)
    frame.to_csv(path, index=False)
    return path
