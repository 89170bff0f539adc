"""Options, tolerances, the independent reference loop and the check shared by the parity tests.

Every path trains PARITY_STEPS optimizer steps of the ``tiny`` preset from the same seeded
weights on the same generated batches of GLOBAL_BATCH samples. The CPU fp32 eager
one-process run of clip.training.step is the reference. :func:`plain_trajectory` is a
second reference written here with plain PyTorch, for the loss definitions that the
project's run cannot serve as a reference for (losses per micro-batch or per replica).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from clip.config import Config, load_config
from clip.parity import (
    Batch,
    NotRun,
    ParityResult,
    Tolerance,
    Trajectory,
    compare_trajectories,
    initial_model,
    parameter_copy,
)
from clip.training.distributed import Replica
from clip.training.optim import build_scheduler, parameter_groups

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_REPLICA = Replica(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PARITY_STEPS = 8
GLOBAL_BATCH = 8
DATA_SEED = 1000
# Two warm-up steps, then cosine decay over the rest of two epochs of PARITY_STEPS steps, so
# the steps run at different learning rates.
PARITY_OPTIONS = {
    "device": "cpu", "context_length": 16, "batch_size": GLOBAL_BATCH,
    "gradient_accumulation": 1, "epochs": 2, "warmup_epochs": 0.25,
}
TableRows = list[ParityResult | NotRun]


def parity_config(**overrides: object) -> Config:
    return load_config("tiny", {**PARITY_OPTIONS, **overrides})


# ---- tolerances ----

# Unit roundoff u of each format: half the gap between 1 and the next number.
FP32_UNIT_ROUNDOFF = 2.0 ** -24  # 24 significand bits: 6.0e-8
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significand bits: 3.9e-3
FP16_UNIT_ROUNDOFF = 2.0 ** -11  # 11 significand bits: 4.9e-4

# Largest errors measured on the tiny preset over 1 to 8 steps (torch 2.14.1, x86-64 CPU,
# one thread). The tolerances below leave a margin of at least 2 above each:
#
#                         loss     Adam state          params (of the update)
#   fp32, other order     10u      142u (compile)      3.5e-4 = 1.4 sqrt(u)
#   bf16                  0.8u     15u                 0.15   = 2.4 sqrt(u)
#   fp16, first step      0.7u     16u                 0.061  = 2.8 sqrt(u)
#   fp16, 8 steps         3.5u     130u                0.063
#
# Loss and Adam state (which holds the gradients) carry the rounding error of one forward
# and backward pass, a multiple of u. Cancellation in the gradients' sums over samples and
# tokens makes that multiple larger than the loss's.
#
# Parameters follow sqrt(u): Adam's first update moves every element by about the learning
# rate whatever its gradient's size, so an element whose gradient is smaller than its
# rounding error may move the other way. The attention key bias, whose exact gradient is
# zero (softmax ignores a constant added to every key's score), moves in a direction that
# rounding alone decides. If gradient values near zero are spread evenly, such elements are
# a fraction proportional to u, and their L2 share of the update grows like sqrt(u). This
# is an estimate, which the measured 1.4 to 2.8 sqrt(u) above bear out.
#
# From the second step on, gradients are taken at weights that already differ by that
# sqrt(u) share, which adds to the state error. In fp16 it outgrows the rounding error
# (16u after one step, up to 130u after eight), but in bf16 it stays below it.
PARAMETER_SQRT_MULTIPLE = 6


def tolerance(name: str, unit_roundoff: float, loss_multiple: float, state_multiple: float,
              reason: str) -> Tolerance:
    """Build a tolerance of loss and state multiples of u, and parameters of 6 sqrt(u)."""
    return Tolerance(
        name=name,
        loss=loss_multiple * unit_roundoff,
        parameters=PARAMETER_SQRT_MULTIPLE * math.sqrt(unit_roundoff),
        optimizer_state=state_multiple * unit_roundoff,
        reason=f"{reason} u = {unit_roundoff:.1e}: loss {loss_multiple:g}u, Adam state "
               f"{state_multiple:g}u, params {PARAMETER_SQRT_MULTIPLE} sqrt(u).",
    )


EXACT = Tolerance(
    name="exact", loss=0.0, parameters=0.0, optimizer_state=0.0,
    reason="The same kernels run on the same rows in the same order; only the grouping of "
           "steps into host calls or the process that runs them changes.",
)
FP32_REORDERED = tolerance(
    "fp32", FP32_UNIT_ROUNDOFF, 64, 512,
    "fp32 throughout, but sums over samples, micro-batches or replicas run in another order, "
    "or the kernels that torch.compile generates fuse operations and round differently.",
)
BF16_AUTOCAST = tolerance(
    "bf16", BF16_UNIT_ROUNDOFF, 8, 32,
    "Matmuls and convolutions in bf16 under autocast; fp32 master weights and loss.",
)
FP16_FIRST_STEP = tolerance(
    "fp16, one step", FP16_UNIT_ROUNDOFF, 8, 32,
    "Matmuls and convolutions in fp16 under autocast with a static loss scale; fp32 master "
    "weights and loss.",
)
FP16_AUTOCAST = tolerance(
    "fp16", FP16_UNIT_ROUNDOFF, 8, 256,
    "As fp16, one step; after the first step the weights differ by the sqrt(u) share of the "
    "update, and the gradients taken there differ by more than fp16 rounding.",
)


# ---- the independent reference ----

def plain_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                    logit_scale: torch.Tensor) -> torch.Tensor:
    """Return CLIP's symmetric cross-entropy of (N, E) normalised features; row i pairs with i."""
    logits = logit_scale * image_features @ text_features.t()  # N N
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def plain_trajectory(config: Config, batches: Sequence[Batch],
                     groups: Sequence[Sequence[int]]) -> Trajectory:
    """Train with a plain PyTorch loop: per step, the mean of each group's own CLIP loss.

    ``groups`` lists the rows of the global batch whose samples are negatives for each
    other: one group of every row is the large-batch loss, one group per micro-batch the
    per-micro-batch loss. Each step makes one backward pass and one AdamW step (the
    for-loop implementation, not the fused one the project uses), then clamps
    logit_scale to [0, ln 100] as CLIP does.
    """
    model = initial_model(config, CPU_REPLICA.device)
    start = parameter_copy(model)
    options = config.optimizer
    optimizer = torch.optim.AdamW(
        parameter_groups(model, options.weight_decay), lr=options.learning_rate,
        betas=(options.beta1, options.beta2), eps=options.eps, foreach=False,
    )
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(batches))
    losses = []
    for images, token_ids in batches:
        group_losses = []
        for rows in groups:
            index = torch.tensor(rows)
            group_losses.append(plain_clip_loss(*model(images[index], token_ids[index])))
        loss = torch.stack(group_losses).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return Trajectory.capture(model, optimizer, losses, start)


def contiguous_groups(group_size: int, samples: int = GLOBAL_BATCH) -> list[list[int]]:
    """Split rows 0..samples-1 into consecutive groups of ``group_size``."""
    return [list(range(first, first + group_size)) for first in range(0, samples, group_size)]


# ---- checking and recording ----

def check_parity(table: TableRows, path: str, reference_name: str, candidate: Trajectory,
                 reference: Trajectory, tolerance: Tolerance) -> None:
    """Compare ``candidate`` with ``reference``, add the row to the table, assert the limits."""
    assert reference.parameters.keys() == reference.start.keys()
    assert any(not torch.equal(reference.parameters[name], reference.start[name])
               for name in reference.start), f"{reference_name}: the reference did not train"
    result = ParityResult(path, reference_name, len(reference.losses),
                          compare_trajectories(candidate, reference), tolerance)
    table.append(result)
    errors = result.errors
    if candidate.optimizer_steps is not None:
        assert candidate.optimizer_steps == reference.optimizer_steps, (
            f"{path}: Adam counted {candidate.optimizer_steps} steps, the reference "
            f"{reference.optimizer_steps}"
        )
    assert errors.loss_rel <= tolerance.loss, (
        f"{path}: loss differs by {errors.loss_rel:.2e} relative (tolerance {tolerance.loss:.1e}); "
        f"losses {candidate.losses} vs {reference.losses}"
    )
    assert errors.parameter_rel <= tolerance.parameters, (
        f"{path}: parameters differ by {errors.parameter_rel:.2e} of the update "
        f"(tolerance {tolerance.parameters:.1e})"
    )
    if errors.state_rel is not None:
        assert errors.state_rel <= tolerance.optimizer_state, (
            f"{path}: Adam state differs by {errors.state_rel:.2e} relative "
            f"(tolerance {tolerance.optimizer_state:.1e})"
        )
