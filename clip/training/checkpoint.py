"""Training checkpoints: atomic writes, the latest checkpoint, RNG state and resumption.

A checkpoint is a dict ``{"format": "clip-train-checkpoint", "version": 1, "model":
state_dict, "config": flat options, "optimizer", "scheduler", "scaler", "step", "epoch",
"rng", "data_position"}`` that holds only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``. ``clip.weights.load_model`` reads its weights.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip.config import Config
from clip.errors import ClipError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "clip-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = re.compile(r"checkpoint_step(\d+)\.pt")

# Options that may differ between a run and its resumption. None of them changes the
# model, the optimizer or the data order, but dataloader_workers and device can change
# the random crops and the rounding.
RESUMABLE_CHANGES = frozenset({
    "config", "max_steps", "restore", "checkpoint_file", "checkpoint_save_steps",
    "output_dir", "checkpoint_dir", "wandb", "dataloader_workers", "async_dataloader",
    "compile", "device", "executable_cache_dir", "image_path", "zeroshot_dataset",
    "zeroshot_path", "ckpt_file", "is_ipu_ckpt",
})


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"checkpoint_step{step:08d}.pt"


def save_checkpoint(checkpoint: dict[str, Any], directory: str | Path) -> Path:
    """Write ``checkpoint`` atomically and return its path.

    The file is written under a temporary name, flushed to disk and renamed with
    ``os.replace``, so a run killed while saving leaves the previous checkpoint as the
    latest, never a truncated one.
    """
    path = checkpoint_path(directory, checkpoint["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        torch.save(checkpoint, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """Return the checkpoint with the highest step in ``directory``, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = {
        int(match.group(1)): path
        for path in directory.iterdir()
        if (match := CHECKPOINT_NAME.fullmatch(path.name))
    }
    return steps[max(steps)] if steps else None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint on the CPU and check its format and version."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ClipError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ClipError(
            f"{path} is not a training checkpoint of this project (no "
            f"format={CHECKPOINT_FORMAT!r} entry); pass a file that clip.train wrote, "
            "or an official checkpoint with --is_ipu_ckpt False."
        )
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ClipError(
            f"{path} has checkpoint version {checkpoint.get('version')}; this program "
            f"reads version {CHECKPOINT_VERSION}."
        )
    return checkpoint


def check_resumable(saved: dict[str, Any], config: Config, path: Path) -> None:
    """Raise ClipError when options that shape the run differ from the checkpoint's."""
    current = config.to_flat()
    changed = [
        f"{name} (saved {saved.get(name)!r}, now {value!r})"
        for name, value in current.items()
        if name not in RESUMABLE_CHANGES and saved.get(name) != value
    ]
    if changed:
        raise ClipError(
            f"cannot resume from {path}: these options differ from the saved run: "
            f"{', '.join(changed)}. Pass the saved values, or start a new run in another "
            "--checkpoint_dir without --restore."
        )


def capture_rng() -> dict[str, Any]:
    """Return the state of Python's, NumPy's, torch's and CUDA's random generators."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # As a tensor, so that the checkpoint loads with weights_only=True.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every random generator to a state from :func:`capture_rng`."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
