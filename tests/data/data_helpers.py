"""Small real files for the data tests: images, truncated images and tiny configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip.config import Config, load_config


def write_image(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0,
                image_format: str | None = None) -> Path:
    """Write a noisy RGB image of (width, height) ``size``; the format follows the suffix."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=image_format)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """Write the first half of a valid JPEG: PIL opens it but fails to decode it."""
    write_image(path, size=(64, 48))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def tiny_config(**overrides: Any) -> Config:
    """Return the tiny preset (32 px images) with no DataLoader workers, plus ``overrides``."""
    values: dict[str, Any] = {"dataloader_workers": 0}
    values.update(overrides)
    return load_config("tiny", values)
