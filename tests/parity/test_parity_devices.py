"""Accelerators against the CPU reference: CUDA when a GPU is present, IPU when poptorch imports.

NOTE: neither test has run here, because this machine has no GPU and no Poplar SDK. Both
are written against the documented torch.cuda and poptorch APIs. Their tolerances are
those of the CPU fp32 paths, unchecked on the devices.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from parity_helpers import (
    FP32_REORDERED,
    GLOBAL_BATCH,
    PARITY_STEPS,
    TableRows,
    check_parity,
    parity_config,
)

from clip.config import Config
from clip.parity import (
    Batch,
    NotRun,
    Trajectory,
    initial_model,
    parameter_copy,
    run_trajectory,
)
from clip.training.distributed import Replica
from clip.training.optim import WarmupSchedule

REFERENCE = f"reference run on the CPU, batch_size {GLOBAL_BATCH}"


@pytest.fixture
def full_fp32_on_cuda() -> Iterator[None]:
    """Turn off TF32 (10-bit significands) in matmuls and convolutions for the test."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.cuda
def test_cuda_matches_cpu(parity_table: TableRows, reference_run: Callable[[int], Trajectory],
                          batches: Callable[[int], list[Batch]],
                          full_fp32_on_cuda: None) -> None:
    path = "device cuda, fp32 (TF32 off)"
    if not torch.cuda.is_available():
        reason = "no CUDA GPU (torch.cuda.is_available() is False)"
        parity_table.append(NotRun(path, REFERENCE, reason))
        pytest.skip(reason)
    config = parity_config(device="cuda")
    replica = Replica(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    trajectory = run_trajectory(config, batches(PARITY_STEPS), replica)
    check_parity(parity_table, path, REFERENCE, trajectory, reference_run(PARITY_STEPS),
                 FP32_REORDERED)


def ipu_trajectory(config: Config, batches: list[Batch]) -> Trajectory:
    """Train on one IPU through clip.training.ipu's loss model, options and optimizer.

    The IPU keeps the weights and the optimizer state on the device, and copyWeightsToHost
    brings the weights back. The Adam state is not compared, because poptorch's optimizer
    state is keyed by PopART tensor ids, not by the model's parameter names.
    """
    import poptorch

    from clip.training.ipu import LossModel, build_ipu_optimizer, build_options

    model = initial_model(config, torch.device("cpu"))
    start = parameter_copy(model)
    loss_model = LossModel(model).train()
    optimizer = build_ipu_optimizer(loss_model, config)
    schedule = WarmupSchedule(round(config.optimizer.warmup_epochs * len(batches)),
                              config.execution.epochs * len(batches),
                              config.optimizer.lr_schedule)
    training_model = poptorch.trainingModel(loss_model, build_options(config),
                                            optimizer=optimizer)
    losses = []
    for step, (images, token_ids) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = config.optimizer.learning_rate * schedule(step)
        training_model.setOptimizer(optimizer)
        losses.append(float(training_model(images, token_ids).float().mean()))
    training_model.copyWeightsToHost()
    training_model.detachFromDevice()
    return Trajectory(losses, start, parameter_copy(model), None, None, None)


@pytest.mark.ipu
def test_ipu_matches_cpu(parity_table: TableRows, reference_run: Callable[[int], Trajectory],
                         batches: Callable[[int], list[Batch]], tmp_path: Path) -> None:
    path = "device ipu, fp32, 1 IPU"
    if importlib.util.find_spec("poptorch") is None:
        reason = "poptorch is not installed (it ships with Graphcore's Poplar SDK)"
        parity_table.append(NotRun(path, REFERENCE, reason))
        pytest.skip(reason)
    # The IPU computes the loss per micro-batch, which with one micro-batch per step and
    # one replica is the reference's loss. logit_scale starts at ln(1/0.07) and moves by
    # about the learning rate per step, so the clamp at ln(100), which the IPU applies in
    # the loss and the CPU after each step, never acts in these steps.
    config = parity_config(device="ipu", loss_negatives="micro_batch", ipus_per_replica=1,
                           enable_half_partials=False,
                           executable_cache_dir=str(tmp_path / "exe_cache"))
    trajectory = ipu_trajectory(config, batches(PARITY_STEPS))
    check_parity(parity_table, path, REFERENCE, trajectory, reference_run(PARITY_STEPS),
                 FP32_REORDERED)
