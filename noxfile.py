"""Developer and CI sessions: `nox -l` lists them, `nox -s NAME -- ARGS` passes ARGS on.

Every session runs in one shared virtual environment (.nox/shared), so torch is
installed once. The environment is rebuilt when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import nox

ROOT = Path(__file__).parent
SHARED_VENV = ROOT / ".nox" / "shared"
EXTRAS = "test,bench,dev,plot,webdataset"
DIGITS_DIR = ROOT / "data" / "digits"
RUNS_DIR = ROOT / "runs"
BASELINES_DIR = ROOT / "results" / "baselines"
MICROBENCH_DIR = ROOT / "results" / "microbench"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def shared_python(session: nox.Session) -> str:
    """Create or update the shared environment and return its interpreter."""
    python = SHARED_VENV / "bin" / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(SHARED_VENV), external=True)
    stamp = SHARED_VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "-e", f".[{EXTRAS}]", external=True)
        stamp.write_text(digest)
    return str(python)


def ensure_digits(session: nox.Session, python: str) -> None:
    """Build the bundled digits set once; the harness's real-data entries train on it."""
    if not (DIGITS_DIR / "train" / "img_cap.csv").exists():
        session.run(python, "-m", "clip.data.digits", "--output", str(DIGITS_DIR), external=True)


def new_run_dir(kind: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{kind}-{stamp}"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (tiny presets; parity paths included)."""
    python = shared_python(session)
    session.run(python, "-m", "pytest", "-q", *session.posargs, external=True)


@nox.session
def benchmark(session: nox.Session) -> None:
    """Run the benchmarks.yml matrix, compare with the stored baseline, write tables."""
    python = shared_python(session)
    ensure_digits(session, python)
    run_dir = new_run_dir("benchmark")
    env = {"DATASETS_DIR": os.environ.get("DATASETS_DIR", "")}
    session.run(python, "-m", "harness", "run", "--spec", "benchmarks.yml",
                "--log-dir", str(run_dir), *session.posargs, external=True, env=env)
    # The run's tables go beside its results; results/tables shows the promoted baseline.
    session.run(python, "-m", "harness", "table", str(run_dir), "--out", str(run_dir / "tables"),
                external=True)
    session.run(python, "-m", "harness", "compare", str(run_dir), "--missing-baseline-ok",
                external=True)


@nox.session
def parity(session: nox.Session) -> None:
    """Check every execution path against the CPU fp32 reference; write the parity table."""
    python = shared_python(session)
    session.run(python, "-m", "pytest", "-q", "tests/parity", "--parity-table",
                "results/parity.md", *session.posargs, external=True)


@nox.session
def microbench(session: nox.Session) -> None:
    """Run the pytest-benchmark suite and its target checks; compare with stored results."""
    python = shared_python(session)
    # pytest-benchmark rejects --benchmark-compare-fail when there is nothing to compare.
    compare = ["--benchmark-compare", "--benchmark-compare-fail=median:25%"]
    if not any(MICROBENCH_DIR.glob("*/*.json")):
        session.log(f"no stored results in {MICROBENCH_DIR}; this run becomes the first")
        compare = []
    # Not --benchmark-only: the speed-up targets and the peak-memory checks are plain tests.
    session.run(python, "-m", "pytest", "benchmarks", "--benchmark-group-by=group",
                f"--benchmark-storage={MICROBENCH_DIR}", "--benchmark-autosave", *compare,
                *session.posargs, external=True)


@nox.session
def tables(session: nox.Session) -> None:
    """Regenerate results/tables from the stored baselines (or the runs given after --)."""
    python = shared_python(session)
    runs = session.posargs or [str(path) for path in sorted(BASELINES_DIR.glob("*.csv"))]
    if not runs:
        session.error("no baseline under results/baselines; promote a run first "
                      "(results/README.md) or pass run folders after --")
    session.run(python, "-m", "harness", "table", *runs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    python = shared_python(session)
    session.run(python, "-m", "ruff", "check", "clip", "harness", "tests", "benchmarks",
                "noxfile.py", *session.posargs, external=True)
