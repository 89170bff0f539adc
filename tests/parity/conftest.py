"""Fixtures of the parity suite: the cached CPU reference runs and the --parity-table report.

``pytest tests/parity --parity-table PATH`` writes one markdown row per path that ran or was
skipped for want of hardware. The option exists only when pytest is started on this folder
or a file in it, because pytest reads options from the conftest files it finds at start-up.
"""

from __future__ import annotations

import functools
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# The repository root (for clip), this folder (for parity_helpers) and the training tests'
# folder (for training_helpers), whatever pytest's import mode.
for folder in (REPO_ROOT, HERE, REPO_ROOT / "tests" / "training"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from parity_helpers import (  # noqa: E402
    CPU_REPLICA,
    DATA_SEED,
    GLOBAL_BATCH,
    TableRows,
    parity_config,
)

from clip.parity import Batch, Trajectory, fixed_batches, run_trajectory, write_table  # noqa: E402

TABLE_ROWS = pytest.StashKey[TableRows]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--parity-table", metavar="PATH", default=None,
        help="Write the parity table (markdown) of the paths checked in this session to PATH.",
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("parity_table", default=None)
    if path:
        write_table(path, session.config.stash.get(TABLE_ROWS, []), table_notes())


def table_notes() -> list[str]:
    """Describe how and where the table was made, for the lines under its title."""
    if torch.cuda.is_available():
        devices = f"{platform.machine()} CPU and {torch.cuda.get_device_name(0)}"
    else:
        devices = f"{platform.machine()} CPU, no GPU"
    return [
        "Written by `python -m pytest -q tests/parity --parity-table results/parity.md` "
        f"with torch {torch.__version__} on {devices}.",
        "Every path trains from the seeded initial weights of the `tiny` preset "
        f"(context_length 16) on the same generated batches of {GLOBAL_BATCH} samples per "
        "optimizer step, and is compared with its reference: the CPU fp32 eager one-process "
        "run of `clip.training.step`, a plain PyTorch loop written in the test, or an "
        "uninterrupted training run. Errors: loss, the max over steps of the relative "
        "error; params rel, the L2 error over all parameters relative to the distance the "
        "reference trained; Adam state rel, the max over parameters of max|error| / max|value| "
        "for exp_avg and exp_avg_sq. `clip/parity.py` explains the measures.",
    ]


@pytest.fixture(scope="session")
def parity_table(pytestconfig: pytest.Config) -> TableRows:
    """The rows of the parity table; each test adds its path."""
    return pytestconfig.stash.setdefault(TABLE_ROWS, [])


@functools.cache
def parity_batches(steps: int) -> list[Batch]:
    return fixed_batches(parity_config(), steps, DATA_SEED)


@functools.cache
def _reference_run(steps: int) -> Trajectory:
    return run_trajectory(parity_config(), parity_batches(steps), CPU_REPLICA)


@pytest.fixture(scope="session")
def reference_run() -> Callable[[int], Trajectory]:
    """Return the CPU fp32 eager one-process trajectory of a number of steps (cached)."""
    return _reference_run


@pytest.fixture(scope="session")
def batches() -> Callable[[int], list[Batch]]:
    """Return the fixed global batches of a number of steps (cached)."""
    return parity_batches
