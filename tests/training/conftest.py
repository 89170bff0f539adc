"""Fixtures for the training tests: tiny configurations and small image-caption folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from training_helpers import write_caption_folder

from clip.config import Config, load_config


@pytest.fixture
def caption_folder(tmp_path: Path) -> tuple[Path, Path]:
    return write_caption_folder(tmp_path / "captions")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Config]:
    """Return a builder of validated tiny configurations writing under ``tmp_path``."""

    def build(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "output_dir": str(tmp_path / "run"),
            "checkpoint_dir": str(tmp_path / "ckpt"),
            "context_length": 16,
        }
        values.update(overrides)
        return load_config("tiny", values)

    return build
