"""Helpers shared by the training tests: environment and a small image-caption folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# One thread per process: on a shared 2-core machine, OpenMP threads that wait for a core
# held by another process make tiny models many times slower.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_caption_folder(root: Path, samples: int = 24, size: int = 16) -> tuple[Path, Path]:
    """Write ``samples`` coloured PNG images with captions; return (captions file, images)."""
    images = root / "images"
    images.mkdir(parents=True)
    colours = ["red", "green", "blue"]
    rows = []
    rng = np.random.default_rng(0)
    for index in range(samples):
        colour = index % 3
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        pixels[..., colour] = 200
        Image.fromarray(pixels).save(images / f"{index:03d}.png")
        rows.append(f"{index:03d}.png\ta {colours[colour]} square number {index}")
    captions = root / "img_cap.csv"
    captions.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return captions, images
