"""Checks of option combinations that training needs, run before training starts.

The launcher runs them before it starts replicas, and each replica runs them again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from clip.config import Config
from clip.errors import ClipError
from clip.training.checkpoint import latest_checkpoint
from clip.training.distributed import check_device, check_world_size


def validate_training(config: Config) -> None:
    """Raise ClipError for the first option combination that cannot train."""
    execution = config.execution
    optimizer = config.optimizer
    if optimizer.warmup_epochs > execution.epochs:
        raise ClipError(
            f"warmup_epochs={optimizer.warmup_epochs:g} is longer than training "
            f"(epochs={execution.epochs}); lower --warmup_epochs or raise --epochs."
        )
    device = check_device(config)
    check_world_size(config)
    if device == "ipu":
        _check_ipu_options(config)
    _check_checkpoint_options(config)
    if config.checkpoint.wandb and importlib.util.find_spec("wandb") is None:
        raise ClipError(
            "wandb=True needs the wandb package, which is not installed; "
            "run 'pip install wandb' or pass --wandb False."
        )


def _check_checkpoint_options(config: Config) -> None:
    checkpoint = config.checkpoint
    if checkpoint.checkpoint_file and not Path(checkpoint.checkpoint_file).is_file():
        raise ClipError(
            f"checkpoint_file={checkpoint.checkpoint_file!r} does not exist; pass an existing "
            "checkpoint or --checkpoint_file ''."
        )
    if checkpoint.restore and latest_checkpoint(checkpoint.checkpoint_dir) is None:
        raise ClipError(
            f"restore=True but {checkpoint.checkpoint_dir} contains no checkpoint_step*.pt "
            "file; check --checkpoint_dir or start without --restore."
        )


def _check_ipu_options(config: Config) -> None:
    """Reject options whose meaning the IPU pipeline cannot keep."""
    execution = config.execution
    if execution.loss_negatives == "step" and execution.gradient_accumulation > 1:
        raise ClipError(
            "loss_negatives=step (negatives from the whole optimizer step) is not available "
            "on IPUs, whose pipeline computes the loss per micro-batch; pass "
            "--loss_negatives micro_batch."
        )
    if execution.gather_features and execution.replication_factor > 1:
        raise ClipError(
            "gather_features=True is not available on IPUs: each replica's loss uses its "
            "own micro-batch; pass --gather_features False."
        )
    if execution.compile:
        raise ClipError(
            "compile=True applies to cpu and cuda; poptorch compiles the model for IPUs "
            "itself; pass --compile False."
        )
    if execution.precision == "bf16":
        raise ClipError("precision=bf16 is not available on IPUs; pass --precision fp16 or fp32.")
    if config.checkpoint.restore:
        raise ClipError("restore=True is not supported on IPUs; resume on cpu or cuda.")
