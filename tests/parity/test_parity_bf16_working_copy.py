"""bf16 on the CPU: the working copy with bf16 matmul weights against plain autocast and fp32.

On the CPU, precision bf16 trains through a Bf16WorkingCopy of the model instead of letting
autocast cast every weight at each use. The matmuls receive the same bf16 values either way,
so one process must reproduce the plain autocast run bit for bit. Replicas average their
gradients without DistributedDataParallel, so they are checked here too. The bf16 case of
test_parity_checkpoint.py checks that checkpoints hold the fp32 weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from parity_helpers import (
    BF16_AUTOCAST,
    CPU_REPLICA,
    DATA_SEED,
    EXACT,
    GLOBAL_BATCH,
    PARITY_STEPS,
    TableRows,
    check_parity,
    parity_config,
)

from clip.config import Config
from clip.parity import (
    Batch,
    Trajectory,
    initial_model,
    parameter_copy,
    record_replica_trajectories,
    run_trajectory,
)
from clip.training.distributed import spawn_replicas
from clip.training.loss import FeatureGather
from clip.training.optim import build_optimizer, build_scheduler
from clip.training.precision import Bf16WorkingCopy, LossScaler
from clip.training.step import StepRunner, build_step_runner

Reference = Callable[[int], Trajectory]
Batches = Callable[[int], list[Batch]]
BF16 = {"precision": "bf16"}
ACCUMULATION = {"batch_size": 4, "gradient_accumulation": 2, "loss_negatives": "step"}


def autocast_trajectory(config: Config, batches: Sequence[Batch]) -> Trajectory:
    """Train through a StepRunner that runs the fp32 model under autocast, no working copy."""
    model = initial_model(config, CPU_REPLICA.device)
    start = parameter_copy(model)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(batches))
    gather = FeatureGather(config.execution.gather_features, rank=0, world_size=1)
    runner = StepRunner(config, model, model, None, optimizer, scheduler,
                        LossScaler(config, CPU_REPLICA.device), gather, CPU_REPLICA.device)
    losses = [runner.run_host_call(images, token_ids).item() for images, token_ids in batches]
    return Trajectory.capture(model, optimizer, losses, start)


def test_cpu_bf16_trains_working_copy() -> None:
    config = parity_config(**BF16)
    model = initial_model(config, CPU_REPLICA.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=1)
    runner = build_step_runner(config, model, optimizer, scheduler,
                               LossScaler(config, CPU_REPLICA.device), CPU_REPLICA)
    assert isinstance(runner.working_copy, Bf16WorkingCopy)
    assert runner.forward_model is runner.working_copy.working
    working = dict(runner.forward_model.named_parameters())
    assert working["visual.transformer.resblocks.0.mlp.c_fc.weight"].dtype == torch.bfloat16
    assert working["text_projection"].dtype == torch.bfloat16
    # Embeddings, gains, biases and logit_scale are the model's own parameters.
    masters = dict(model.named_parameters())
    for name in ("token_embedding.weight", "visual.conv1.weight", "logit_scale",
                 "visual.transformer.resblocks.0.mlp.c_fc.bias", "ln_final.weight"):
        assert working[name] is masters[name], name


@pytest.mark.parametrize(
    ("path", "overrides", "steps"),
    [
        ("precision bf16, working copy", {}, 1),
        ("precision bf16, working copy", {}, PARITY_STEPS),
        ("precision bf16, working copy, gradient_accumulation 2 x batch_size 4, "
         "loss_negatives step", ACCUMULATION, PARITY_STEPS),
    ],
    ids=["one-step", "steps", "accumulation"],
)
def test_working_copy_equals_autocast(parity_table: TableRows, batches: Batches, path: str,
                                      overrides: dict[str, object], steps: int) -> None:
    config = parity_config(**BF16, **overrides)
    candidate = run_trajectory(config, batches(steps), CPU_REPLICA)
    reference = autocast_trajectory(config, batches(steps))
    check_parity(parity_table, path, "fp32 weights under bf16 autocast", candidate, reference,
                 EXACT)


def test_bf16_replicas_against_fp32(parity_table: TableRows, reference_run: Reference,
                                    tmp_path: Path) -> None:
    output = tmp_path / "trajectories.pt"
    target = functools.partial(
        record_replica_trajectories, cases={"gathered": {"batch_size": 4, **BF16}},
        steps=PARITY_STEPS, seed=DATA_SEED, output=str(output),
    )
    exit_code = spawn_replicas(target, parity_config(replication_factor=2))
    assert exit_code == 0, f"a replica exited with status {exit_code}; see the captured stderr"
    replicated = Trajectory.from_dict(torch.load(output, weights_only=True)["gathered"])
    check_parity(parity_table,
                 "replication_factor 2 x batch_size 4, gather_features True, precision bf16",
                 f"reference run, batch_size {GLOBAL_BATCH}, fp32", replicated,
                 reference_run(PARITY_STEPS), BF16_AUTOCAST)
