"""clip.parity itself: the error measures, its user errors, the table and --parity-table."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from parity_helpers import CPU_REPLICA, DATA_SEED, REPO_ROOT, parity_config

from clip.errors import ClipError
from clip.parity import (
    NotRun,
    ParityResult,
    Tolerance,
    Trajectory,
    compare_trajectories,
    fixed_batches,
    initial_model,
    parameter_copy,
    render_table,
    run_trajectory,
)

LOOSE = Tolerance("loose", loss=0.1, parameters=0.5, optimizer_state=0.5, reason="For tests.")


def trajectory(losses: list[float], weight: list[float], exp_avg: list[float],
               steps: int = 2) -> Trajectory:
    """A hand-made trajectory of one parameter ``w`` that started at [0, 0]."""
    return Trajectory(
        losses=losses, start={"w": torch.zeros(2)}, parameters={"w": torch.tensor(weight)},
        exp_avg={"w": torch.tensor(exp_avg)}, exp_avg_sq={"w": torch.tensor([1.0, 1.0])},
        optimizer_steps=steps,
    )


def test_compare_measures_errors() -> None:
    reference = trajectory([2.0, 1.0], [3.0, 4.0], [0.5, -1.0])
    candidate = trajectory([2.2, 1.0], [3.0, 4.5], [0.5, -0.9])
    errors = compare_trajectories(candidate, reference)
    assert errors.loss_abs == pytest.approx(0.2)
    assert errors.loss_rel == pytest.approx(0.1)
    assert errors.parameter_abs == pytest.approx(0.5)
    # The reference moved [3, 4] from the start, a distance of 5.
    assert errors.parameter_rel == pytest.approx(0.5 / 5)
    # exp_avg differs by 0.1 where its largest value is 1.0; exp_avg_sq is equal.
    assert errors.state_rel == pytest.approx(0.1)
    assert errors.optimizer_steps == (2, 2)


def test_compare_identical_is_zero() -> None:
    reference = trajectory([2.0], [3.0, 4.0], [0.5, -1.0])
    errors = compare_trajectories(reference, reference)
    assert (errors.loss_abs, errors.loss_rel, errors.parameter_abs) == (0, 0, 0)
    assert (errors.parameter_rel, errors.state_rel) == (0, 0)


def test_compare_untrained_reference() -> None:
    # A reference that did not move makes any parameter error infinitely large.
    reference = trajectory([2.0], [0.0, 0.0], [0.5, -1.0])
    assert compare_trajectories(trajectory([2.0], [0.0, 1.0], [0.5, -1.0]),
                                reference).parameter_rel == math.inf


def test_compare_without_state() -> None:
    reference = trajectory([2.0], [3.0, 4.0], [0.5, -1.0])
    device_run = Trajectory([2.0], reference.start, reference.parameters, None, None, None)
    errors = compare_trajectories(device_run, reference)
    assert errors.state_rel is None
    # Without Adam state, neither the state nor the step count is compared.
    assert ParityResult("device", "cpu", 1, errors, LOOSE).failures() == []


def test_compare_rejects_other_lengths() -> None:
    reference = trajectory([2.0, 1.0], [3.0, 4.0], [0.5, -1.0])
    with pytest.raises(ClipError, match="trajectories have 1 and 2 steps"):
        compare_trajectories(trajectory([2.0], [3.0, 4.0], [0.5, -1.0]), reference)


def test_compare_rejects_other_parameters() -> None:
    reference = trajectory([2.0], [3.0, 4.0], [0.5, -1.0])
    other = Trajectory([2.0], {"v": torch.zeros(2)}, {"v": torch.ones(2)},
                       None, None, None)
    with pytest.raises(ClipError, match=r"different parameters \(v, w\)"):
        compare_trajectories(other, reference)


def test_compare_rejects_other_start() -> None:
    reference = trajectory([2.0], [3.0, 4.0], [0.5, -1.0])
    other = trajectory([2.0], [3.0, 4.0], [0.5, -1.0])
    other.start["w"] = torch.ones(2)
    with pytest.raises(ClipError, match=r"start from different weights \(w differs\)"):
        compare_trajectories(other, reference)


def test_result_failures_name_each_limit() -> None:
    reference = trajectory([2.0, 1.0], [3.0, 4.0], [0.5, -1.0])
    candidate = trajectory([3.0, 1.0], [3.0, 4.0], [0.5, 0.0], steps=1)
    result = ParityResult("path", "reference", 2, compare_trajectories(candidate, reference),
                          LOOSE)
    assert result.failures() == [
        "Adam took 1 steps, the reference 2",
        "loss rel 5.0e-01 > 1.0e-01",
        "Adam state rel 1.0e+00 > 5.0e-01",
    ]
    assert not result.passed


def test_capture_rejects_sgd() -> None:
    config = parity_config(optimizer="SGD")
    model = initial_model(config, CPU_REPLICA.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.logit_scale.grad = torch.ones(())
    optimizer.step()
    with pytest.raises(ClipError, match="keeps no Adam state.*--optimizer AdamW or Adam"):
        Trajectory.capture(model, optimizer, [1.0], parameter_copy(model))


def test_run_rejects_replica_mismatch() -> None:
    config = parity_config(replication_factor=2, batch_size=4)
    with pytest.raises(ClipError, match="replication_factor=2 but the process group has 1"):
        run_trajectory(config, fixed_batches(config, 1, DATA_SEED), CPU_REPLICA)


def test_run_rejects_no_batches() -> None:
    with pytest.raises(ClipError, match="no batches to train on"):
        run_trajectory(parity_config(), [], CPU_REPLICA)


def test_run_rejects_partial_host_call() -> None:
    config = parity_config(device_iterations=4)
    with pytest.raises(ClipError, match="3 steps are not a whole number of host calls"):
        run_trajectory(config, fixed_batches(config, 3, DATA_SEED), CPU_REPLICA)


def test_run_rejects_wrong_batch_size() -> None:
    config = parity_config()
    batches = fixed_batches(parity_config(batch_size=4), 1, DATA_SEED)
    with pytest.raises(ClipError, match="a batch has 4 samples but the global batch is 8"):
        run_trajectory(config, batches, CPU_REPLICA)


def test_render_table_rows() -> None:
    reference = trajectory([2.0, 1.0], [3.0, 4.0], [0.5, -1.0])
    passed = ParityResult("same", "ref", 2, compare_trajectories(reference, reference), LOOSE)
    failed = ParityResult("other", "ref", 2, compare_trajectories(
        trajectory([3.0, 1.0], [3.0, 4.0], [0.5, -1.0]), reference), LOOSE)
    table = render_table([passed, failed, NotRun("device x", "ref", "no x here")],
                         notes=["A note."])
    assert table == (
        "# Parity of execution paths\n\nA note.\n\n"
        "| path | reference | steps | loss max abs | loss max rel | params max abs | params rel "
        "| Adam state rel | tolerance | verdict |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|\n"
        "| same | ref | 2 | 0 | 0 | 0 | 0 | 0 | loose | pass |\n"
        "| other | ref | 2 | 1.0e+00 | 5.0e-01 | 0 | 0 | 0 | loose "
        "| FAIL: loss rel 5.0e-01 > 1.0e-01 |\n"
        "| device x | ref | - | - | - | - | - | - | - | not run: no x here |\n"
        "\n## Tolerances\n\n"
        "| tolerance | loss rel | params rel | Adam state rel | reason |\n"
        "|---|---:|---:|---:|---|\n"
        "| loose | 1.0e-01 | 5.0e-01 | 5.0e-01 | For tests. |\n"
    )


def test_parity_table_option_writes_file(tmp_path: Path) -> None:
    table = tmp_path / "results" / "parity.md"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/parity/test_parity_paths.py::test_device_iterations_equal_host_calls",
         "tests/parity/test_parity_devices.py::test_ipu_matches_cpu",
         "--parity-table", str(table)],
        cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = table.read_text().splitlines()
    assert lines[0] == "# Parity of execution paths"
    rows = [line for line in lines if line.startswith("| device")]
    assert rows[0].startswith("| device_iterations 4 | reference run, 8 host calls of 1 step "
                              "| 8 | 0 | 0 | 0 | 0 | 0 | exact | pass |")
    assert rows[1].startswith("| device ipu, fp32, 1 IPU |")
    if importlib.util.find_spec("poptorch") is None:
        assert rows[1].endswith("| not run: poptorch is not installed (it ships with "
                                "Graphcore's Poplar SDK) |")
