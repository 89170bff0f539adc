"""Fixtures for the data tests; the file helpers are in data_helpers.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Put the repository root (for clip) and this folder (for data_helpers) on sys.path, because
# pytest's importlib import mode does not add test folders itself.
for folder in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from data_helpers import write_image  # noqa: E402


@pytest.fixture
def caption_set(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Write ``count`` JPEGs with the captions 'caption number N' in the cc3m layout.

    Returns a function taking (count, extra_lines) that returns (captions_path, image_path);
    extra_lines are appended verbatim to the captions file.
    """
    def make(count: int, extra_lines: tuple[str, ...] = ()) -> tuple[Path, Path]:
        images = tmp_path / "images"
        lines = []
        for index in range(count):
            write_image(images / f"{index:03d}.jpg", seed=index)
            lines.append(f"{index:03d}.jpg\tcaption number {index}")
        captions = tmp_path / "img_cap.csv"
        captions.write_text("\n".join(lines + list(extra_lines)) + "\n", encoding="utf-8")
        return captions, images

    return make
