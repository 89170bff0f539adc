"""Build a small real image-caption set from scikit-learn's handwritten digits.

    python -m clip.data.digits --output data/digits

scikit-learn ships the UCI optical digits test set: 1,797 scans of 8 x 8 pixels with 17 grey
levels, 10 classes. A fixed stratified 20% becomes the test split, the rest the train split:

- ``train/images/NNNN.png`` and ``train/img_cap.csv`` (``NNNN.png<TAB>caption``), the
  Conceptual Captions layout, with captions drawn from varied templates;
- ``test/images/NNNN.png`` and ``test/val_official_clean.csv`` (``images/NNNN.png<TAB>label``),
  the ImageNet map-file layout, for zero-shot evaluation with the class names zero to nine.

NNNN is the scan's index in ``sklearn.datasets.load_digits``. Scans become dark ink on white
and are upscaled with bilinear interpolation, to 32 x 32 pixels by default, so that the
model's transforms work on them. The build is deterministic: running it again over an existing
folder rewrites nothing that has not changed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from clip.data.layout import CAPTIONS_FILE, IMAGES_FOLDER, MAP_FILE
from clip.errors import ClipError

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.2
SPLIT_SEED = 0
CAPTION_SEED = 1
DEFAULT_IMAGE_SIZE = 32
# load_digits counts ink in 17 levels, 0 (paper) to 16 (full ink).
INK_LEVELS = 16
NUMERALS = "0123456789"


@dataclass
class DigitsSet:
    """Folders and sizes of a built digits set."""

    train_path: Path
    test_path: Path
    train_samples: int
    test_samples: int


def build_digits_set(output: str | Path, image_size: int = DEFAULT_IMAGE_SIZE) -> DigitsSet:
    """Write the train and test splits under ``output``; see the module docstring."""
    # Imported here because scikit-learn takes a second to import.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 8:
        raise ClipError(f"image_size={image_size} is below the scans' 8 pixels; use 8 or more.")
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED
    )
    prompts = json.loads(
        resources.files("clip.data").joinpath("zero_shot_digits.json").read_text("utf-8")
    )
    captions = _captions(digits.target, prompts["classnames"], prompts["caption_templates"])

    output = Path(output)
    train_images, test_images = output / "train" / IMAGES_FOLDER, output / "test" / IMAGES_FOLDER
    train_lines, test_lines = [], []
    for index in sorted(train):
        name = _write_scan(train_images, index, digits.images[index], image_size)
        train_lines.append(f"{name}\t{captions[index]}\n")
    for index in sorted(test):
        name = _write_scan(test_images, index, digits.images[index], image_size)
        test_lines.append(f"{IMAGES_FOLDER}/{name}\t{digits.target[index]}\n")
    _write_if_changed(output / "train" / CAPTIONS_FILE, "".join(train_lines).encode("utf-8"))
    _write_if_changed(output / "test" / MAP_FILE, "".join(test_lines).encode("utf-8"))

    logger.info("wrote %d train and %d test digits to %s", len(train), len(test), output)
    return DigitsSet(output / "train", output / "test", len(train), len(test))


def _captions(targets: np.ndarray, classnames: list[str], templates: list[str]) -> list[str]:
    rng = np.random.default_rng(CAPTION_SEED)
    choices = rng.integers(len(templates), size=len(targets))
    return [
        templates[choice].format(word=classnames[target], numeral=NUMERALS[target])
        for choice, target in zip(choices, targets, strict=True)
    ]


def _write_scan(folder: Path, index: int, scan: np.ndarray, image_size: int) -> str:
    # Ink levels 0..16 become grey values 255 (paper) down to 0 (full ink).
    grey = np.rint(255.0 - scan * (255.0 / INK_LEVELS)).astype(np.uint8)
    image = Image.fromarray(grey).resize((image_size, image_size), Image.Resampling.BILINEAR)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    name = f"{index:04d}.png"
    _write_if_changed(folder / name, encoded.getvalue())
    return name


def _write_if_changed(path: Path, content: bytes) -> None:
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip.data.digits",
        description="Build an image-caption set from scikit-learn's handwritten digits.",
    )
    parser.add_argument("--output", default="data/digits",
                        help="Folder for the train and test splits (default: %(default)s)")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="Height and width of the PNG images in pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_digits_set(args.output, args.image_size)
    except ClipError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
