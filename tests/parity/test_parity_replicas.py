"""Two data-parallel replicas (real processes, torch.distributed with gloo) against one process.

The project's own launcher, ``spawn_replicas``, starts the replicas once for the module.
Each trains every case of REPLICA_CASES on its half of the same global batches: replica r
takes rows r*4 .. r*4+3 of each 8-sample global batch, and its micro-batches in that order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from parity_helpers import (
    DATA_SEED,
    FP16_AUTOCAST,
    FP32_REORDERED,
    GLOBAL_BATCH,
    PARITY_STEPS,
    TableRows,
    check_parity,
    contiguous_groups,
    parity_config,
    plain_trajectory,
)

from clip.parity import Batch, Tolerance, Trajectory, record_replica_trajectories
from clip.training.distributed import spawn_replicas

REPLICAS = 2


@dataclass(frozen=True)
class ReplicaCase:
    """A replicated configuration and the one-process run it must equal.

    ``groups`` lists the rows of the global batch that are negatives for each other in the
    replicated loss; None means one group of all rows, which is the reference run itself.
    """

    path: str
    overrides: dict[str, object]
    groups: list[list[int]] | None
    tolerance: Tolerance


REPLICA_CASES = {
    "gathered": ReplicaCase(
        "replication_factor 2 x batch_size 4, gather_features True",
        {"batch_size": 4, "gather_features": True}, None, FP32_REORDERED),
    "local": ReplicaCase(
        "replication_factor 2 x batch_size 4, gather_features False",
        {"batch_size": 4, "gather_features": False}, contiguous_groups(4), FP32_REORDERED),
    "gathered_step": ReplicaCase(
        "replication_factor 2 x gradient_accumulation 2 x batch_size 2, gather_features "
        "True, loss_negatives step",
        {"batch_size": 2, "gradient_accumulation": 2, "loss_negatives": "step"}, None,
        FP32_REORDERED),
    "local_step": ReplicaCase(
        "replication_factor 2 x gradient_accumulation 2 x batch_size 2, gather_features "
        "False, loss_negatives step",
        {"batch_size": 2, "gradient_accumulation": 2, "loss_negatives": "step",
         "gather_features": False}, contiguous_groups(4), FP32_REORDERED),
    # Micro-batch j of the step gathers micro-batch j of both replicas: rows 0-1 with 4-5,
    # and rows 2-3 with 6-7.
    "gathered_micro_batch": ReplicaCase(
        "replication_factor 2 x gradient_accumulation 2 x batch_size 2, gather_features "
        "True, loss_negatives micro_batch",
        {"batch_size": 2, "gradient_accumulation": 2, "loss_negatives": "micro_batch"},
        [[0, 1, 4, 5], [2, 3, 6, 7]], FP32_REORDERED),
    "gathered_fp16": ReplicaCase(
        "replication_factor 2 x batch_size 4, gather_features True, precision fp16",
        {"batch_size": 4, "precision": "fp16", "loss_scaling": 1024.0}, None, FP16_AUTOCAST),
}


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trajectory]:
    """Run every case in two spawned gloo replicas; return rank 0's trajectories."""
    output = tmp_path_factory.mktemp("replicas") / "trajectories.pt"
    config = parity_config(replication_factor=REPLICAS)
    target = functools.partial(
        record_replica_trajectories,
        cases={name: case.overrides for name, case in REPLICA_CASES.items()},
        steps=PARITY_STEPS, seed=DATA_SEED, output=str(output),
    )
    exit_code = spawn_replicas(target, config)
    assert exit_code == 0, (
        f"a replica exited with status {exit_code}; see its traceback in the captured stderr"
    )
    saved = torch.load(output, weights_only=True)
    return {name: Trajectory.from_dict(values) for name, values in saved.items()}


@pytest.mark.parametrize("name", list(REPLICA_CASES))
def test_replicas_equal_one_process(parity_table: TableRows, replicated: dict[str, Trajectory],
                                    reference_run: Callable[[int], Trajectory],
                                    batches: Callable[[int], list[Batch]], name: str) -> None:
    case = REPLICA_CASES[name]
    if case.groups is None:
        reference = reference_run(PARITY_STEPS)
        reference_name = f"reference run, batch_size {GLOBAL_BATCH}, fp32"
    else:
        one_process = parity_config(**{**case.overrides, "batch_size": GLOBAL_BATCH,
                                       "gradient_accumulation": 1})
        reference = plain_trajectory(one_process, batches(PARITY_STEPS), case.groups)
        reference_name = f"plain loop, mean of the losses of rows {case.groups}"
    check_parity(parity_table, case.path, reference_name, replicated[name], reference,
                 case.tolerance)


def test_replicas_saved_every_case(replicated: dict[str, Trajectory]) -> None:
    assert set(replicated) == set(REPLICA_CASES)
    for name, trajectory in replicated.items():
        assert len(trajectory.losses) == PARITY_STEPS, name
        assert trajectory.optimizer_steps == PARITY_STEPS, name

