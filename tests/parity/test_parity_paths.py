"""Single-process paths against the CPU fp32 eager reference: accumulation, host calls,
precision and torch.compile.

fp16 with dynamic loss scaling (loss_scaling 0) is not compared step by step: its initial
scale of 2^16 overflows the fp16 gradients of the first steps, which are skipped by design,
so its trajectory is a different one. test_parity_checkpoint.py checks it in a restored run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import torch
from parity_helpers import (
    BF16_AUTOCAST,
    CPU_REPLICA,
    EXACT,
    FP16_AUTOCAST,
    FP16_FIRST_STEP,
    FP32_REORDERED,
    GLOBAL_BATCH,
    PARITY_STEPS,
    TableRows,
    check_parity,
    contiguous_groups,
    parity_config,
    plain_trajectory,
)

from clip.parity import (
    Batch,
    NotRun,
    Tolerance,
    Trajectory,
    compare_trajectories,
    run_trajectory,
)

Reference = Callable[[int], Trajectory]
Batches = Callable[[int], list[Batch]]
REFERENCE = f"reference run, batch_size {GLOBAL_BATCH}"
# Compiling takes about 90 s with a cold inductor cache on 2 shared cores, and a few seconds
# with a warm one. The compiled steps are cheap, and 4 of them still span the warm-up and
# the decay of the learning rate.
COMPILE_STEPS = 4
CXX_COMPILERS = ("g++", "c++", "clang++")
# Below the global gradient norms of these steps (6 to 50), so that every step clips.
CLIP_NORM = 1.0


def test_reference_matches_plain_loop(parity_table: TableRows, reference_run: Reference,
                                      batches: Batches) -> None:
    reference = reference_run(PARITY_STEPS)
    plain = plain_trajectory(parity_config(), batches(PARITY_STEPS),
                             contiguous_groups(GLOBAL_BATCH))
    check_parity(parity_table, f"reference run (StepRunner), batch_size {GLOBAL_BATCH}",
                 "plain PyTorch loop, for-loop AdamW", reference, plain, FP32_REORDERED)
    # The reference learns. Each step has its own batch, so the first two losses are compared
    # with the last two.
    assert sum(reference.losses[-2:]) < sum(reference.losses[:2])


@pytest.mark.parametrize("accumulation", [2, 4])
def test_accumulation_step_negatives(parity_table: TableRows, reference_run: Reference,
                                     batches: Batches, accumulation: int) -> None:
    micro_batch = GLOBAL_BATCH // accumulation
    config = parity_config(batch_size=micro_batch, gradient_accumulation=accumulation,
                           loss_negatives="step")
    trajectory = run_trajectory(config, batches(PARITY_STEPS), CPU_REPLICA)
    check_parity(parity_table,
                 f"gradient_accumulation {accumulation} x batch_size {micro_batch}, "
                 "loss_negatives step", REFERENCE, trajectory,
                 reference_run(PARITY_STEPS), FP32_REORDERED)


@pytest.mark.parametrize("accumulation", [2, 4])
def test_accumulation_micro_batch_negatives(parity_table: TableRows, batches: Batches,
                                            accumulation: int) -> None:
    micro_batch = GLOBAL_BATCH // accumulation
    config = parity_config(batch_size=micro_batch, gradient_accumulation=accumulation,
                           loss_negatives="micro_batch")
    trajectory = run_trajectory(config, batches(PARITY_STEPS), CPU_REPLICA)
    plain = plain_trajectory(config, batches(PARITY_STEPS), contiguous_groups(micro_batch))
    check_parity(parity_table,
                 f"gradient_accumulation {accumulation} x batch_size {micro_batch}, "
                 "loss_negatives micro_batch",
                 f"plain loop, mean of {accumulation} micro-batch losses", trajectory, plain,
                 FP32_REORDERED)


def test_device_iterations_equal_host_calls(parity_table: TableRows, reference_run: Reference,
                                            batches: Batches) -> None:
    config = parity_config(device_iterations=4)
    trajectory = run_trajectory(config, batches(PARITY_STEPS), CPU_REPLICA)
    check_parity(parity_table, "device_iterations 4",
                 f"reference run, {PARITY_STEPS} host calls of 1 step", trajectory,
                 reference_run(PARITY_STEPS), EXACT)


@pytest.mark.parametrize(
    ("path", "options", "steps", "tolerance"),
    [
        ("precision bf16", {"precision": "bf16"}, 1, BF16_AUTOCAST),
        ("precision bf16", {"precision": "bf16"}, PARITY_STEPS, BF16_AUTOCAST),
        ("precision fp16, loss_scaling 1024", {"precision": "fp16", "loss_scaling": 1024.0},
         1, FP16_FIRST_STEP),
        ("precision fp16, loss_scaling 1024", {"precision": "fp16", "loss_scaling": 1024.0},
         PARITY_STEPS, FP16_AUTOCAST),
        ("precision bf16, gradient_accumulation 2 x batch_size 4, loss_negatives step",
         {"precision": "bf16", "batch_size": 4, "gradient_accumulation": 2,
          "loss_negatives": "step"}, PARITY_STEPS, BF16_AUTOCAST),
    ],
    ids=["bf16-1", "bf16", "fp16-1", "fp16", "bf16-accumulation"],
)
def test_precision_against_fp32(parity_table: TableRows, reference_run: Reference,
                                batches: Batches, path: str, options: dict[str, object],
                                steps: int, tolerance: Tolerance) -> None:
    trajectory = run_trajectory(parity_config(**options), batches(steps), CPU_REPLICA)
    check_parity(parity_table, path, f"{REFERENCE}, fp32", trajectory, reference_run(steps),
                 tolerance)


@pytest.mark.parametrize(
    ("path", "options", "tolerance"),
    [
        ("grad_clip_norm 1, precision fp16, loss_scaling 1024",
         {"precision": "fp16", "loss_scaling": 1024.0}, FP16_AUTOCAST),
        ("grad_clip_norm 1, gradient_accumulation 2 x batch_size 4, loss_negatives step",
         {"batch_size": 4, "gradient_accumulation": 2, "loss_negatives": "step"},
         FP32_REORDERED),
    ],
    ids=["fp16", "accumulation"],
)
def test_clipped_paths(parity_table: TableRows, reference_run: Reference, batches: Batches,
                       path: str, options: dict[str, object], tolerance: Tolerance) -> None:
    clipped = run_trajectory(parity_config(grad_clip_norm=CLIP_NORM), batches(PARITY_STEPS),
                             CPU_REPLICA)
    # Clipping acts: Adam's state holds the clipped gradients, far from the unclipped ones.
    assert compare_trajectories(clipped, reference_run(PARITY_STEPS)).state_rel > 0.5
    trajectory = run_trajectory(parity_config(grad_clip_norm=CLIP_NORM, **options),
                                batches(PARITY_STEPS), CPU_REPLICA)
    check_parity(parity_table, path, f"{REFERENCE}, grad_clip_norm 1, fp32", trajectory,
                 clipped, tolerance)


def test_compile_against_eager(parity_table: TableRows, reference_run: Reference,
                               batches: Batches) -> None:
    path = "compile True"
    if not any(shutil.which(compiler) for compiler in CXX_COMPILERS):
        reason = (f"torch.compile's CPU backend needs a C++ compiler; none of "
                  f"{', '.join(CXX_COMPILERS)} is on PATH")
        parity_table.append(NotRun(path, REFERENCE, reason))
        pytest.skip(reason)
    config = parity_config(compile=True)
    try:
        trajectory = run_trajectory(config, batches(COMPILE_STEPS), CPU_REPLICA)
    finally:
        # Frees the compiled graphs, which hold on to this test's model.
        torch.compiler.reset()
    check_parity(parity_table, path, f"{REFERENCE}, eager", trajectory,
                 reference_run(COMPILE_STEPS), FP32_REORDERED)
