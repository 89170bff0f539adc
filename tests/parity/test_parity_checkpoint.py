"""Checkpoint, restore and continue against an uninterrupted run, through clip.train's loop.

Generated data is never checkpointed, so these runs read a small image-caption folder:
16 images in host calls of 4 give 4 optimizer steps per epoch and 8 in 2 epochs. The
interrupted run stops at step 3, inside the first epoch, so the restored run must also
replay the data order and the random crops of the rest of that epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity_helpers import CPU_REPLICA, EXACT, TableRows, check_parity
from training_helpers import write_caption_folder

from clip.config import Config, load_config
from clip.parity import Trajectory, initial_model, parameter_copy
from clip.training import checkpoint as ckpt
from clip.training.loop import train
from clip.training.optim import build_optimizer

STEPS = 8
STOP_AT = 3
RUN_OPTIONS = {
    "device": "cpu", "context_length": 16, "batch_size": 4, "epochs": 2,
    "warmup_epochs": 0.25, "checkpoint_save_steps": 100, "dataloader_workers": 0,
}


def run_config(tmp_path: Path, folder: tuple[Path, Path], run: str,
               **overrides: object) -> Config:
    captions, images = folder
    values = {**RUN_OPTIONS, "captions_path": str(captions), "image_path": str(images),
              "output_dir": str(tmp_path / run), "checkpoint_dir": str(tmp_path / f"{run}_ckpt"),
              **overrides}
    return load_config("tiny", values)


def logged_losses(config: Config) -> list[float]:
    metrics = Path(config.checkpoint.output_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [loss for record in records for loss in record["losses"]]


def checkpoint_trajectory(config: Config, losses: list[float]) -> Trajectory:
    """Rebuild the trajectory from the run's last checkpoint and its logged losses."""
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(config.checkpoint.checkpoint_dir))
    assert saved["step"] == STEPS
    start = parameter_copy(initial_model(config, CPU_REPLICA.device))
    model = initial_model(config, CPU_REPLICA.device)
    model.load_state_dict(saved["model"])
    optimizer = build_optimizer(model, config)
    optimizer.load_state_dict(saved["optimizer"])
    return Trajectory.capture(model, optimizer, losses, start)


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("checkpoint at step 3, restore, continue", {}),
        ("checkpoint at step 3, restore, continue; precision fp16, dynamic loss scaling",
         {"precision": "fp16", "loss_scaling": 0.0}),
        # On the CPU bf16 trains a bf16 working copy, but checkpoints hold fp32 weights.
        ("checkpoint at step 3, restore, continue; precision bf16", {"precision": "bf16"}),
    ],
    ids=["fp32", "fp16-dynamic", "bf16"],
)
def test_restored_run_equals_uninterrupted(parity_table: TableRows, tmp_path: Path,
                                           path: str, options: dict[str, object]) -> None:
    folder = write_caption_folder(tmp_path / "captions", samples=16)
    uninterrupted = run_config(tmp_path, folder, "whole", **options)
    train(uninterrupted)
    first = run_config(tmp_path, folder, "first", max_steps=STOP_AT, **options)
    train(first)
    resumed = run_config(tmp_path, folder, "resumed", restore=True,
                         checkpoint_dir=first.checkpoint.checkpoint_dir, **options)
    train(resumed)

    whole_losses = logged_losses(uninterrupted)
    assert len(whole_losses) == STEPS
    assert len(logged_losses(first)) == STOP_AT
    expected = checkpoint_trajectory(uninterrupted, whole_losses)
    restored = checkpoint_trajectory(resumed, logged_losses(first) + logged_losses(resumed))
    for name, value in expected.parameters.items():
        assert value.dtype == torch.float32, name
    check_parity(parity_table, path, "uninterrupted run (clip.train, image folder)", restored,
                 expected, EXACT)


def test_fp16_dynamic_checkpoint_holds_reduced_scale(tmp_path: Path) -> None:
    # The fp16 case above checks the restoring of the loss scale only if the scale has
    # backed off from 2^16 by the checkpoint: a restored run that started again from 2^16
    # would then skip other steps than the uninterrupted run.
    folder = write_caption_folder(tmp_path / "captions", samples=16)
    options = {"precision": "fp16", "loss_scaling": 0.0}
    first = run_config(tmp_path, folder, "first", max_steps=STOP_AT, **options)
    train(first)
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(first.checkpoint.checkpoint_dir))
    assert saved["scaler"]["scaler"]["scale"] < 2.0 ** 16
    assert saved["scaler"]["skipped_steps"] >= 1
