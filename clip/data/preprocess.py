"""Write the ImageNet-1k validation map file that zero-shot evaluation reads.

    python -m clip.data.preprocess --imagenet_val_path data/imagenet

Two folder layouts are read:

- class subfolders named by WordNet id (``n01440764/ILSVRC2012_val_00000293.JPEG``);
- flat files with a ground-truth file (``--ground_truth_file``, or ``val_official.json`` or
  ``LOC_val_solution.csv`` found in the folder). The ground truth may be JSON lines with
  ``filename`` and ``label`` keys (the Graphcore example's ``val_official.json``), Kaggle's
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, first word the WordNet id), or one
  ``file label`` pair per line. A label is a WordNet id or a class index from 0 to 999 in the
  standard order.

Entries whose image does not exist are dropped (and, with ``--verify_images``, those that do
not decode). The output, ``val_official_clean.csv`` by default, has one ``file<TAB>label`` line
per image, with files relative to the output's folder and labels in the order of the zero-shot
class names, which is the standard order of sorted WordNet ids.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from clip.data.images import ImageDecodeError, load_rgb
from clip.data.layout import MAP_FILE
from clip.data.zero_shot import read_wnids
from clip.errors import ClipError

logger = logging.getLogger(__name__)

DEFAULT_GROUND_TRUTH_FILES = ("val_official.json", "LOC_val_solution.csv")
# Tried, in this order, for a ground-truth name without an extension (Kaggle's ImageId).
IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png")
MAX_LOGGED_EXAMPLES = 3


@dataclass
class MapFileResult:
    """Result of build_map_file: the map file, its number of lines and the dropped entries."""

    output: Path
    written: int
    dropped: dict[str, list[str]] = field(default_factory=dict)


def build_map_file(val_path: str | Path, ground_truth_file: str | Path | None = None,
                   output: str | Path | None = None,
                   verify_images: bool = False) -> MapFileResult:
    """Write the map file of an ImageNet validation folder; see the module docstring."""
    val_path = Path(val_path)
    if not val_path.is_dir():
        raise ClipError(
            f"ImageNet validation folder {val_path} not found; set --imagenet_val_path."
        )
    output = Path(output) if output else val_path / MAP_FILE
    class_index = {wnid: index for index, wnid in enumerate(read_wnids())}
    ground_truth = Path(ground_truth_file) if ground_truth_file else _default_ground_truth(val_path)
    if ground_truth is not None:
        labelled = _read_ground_truth(ground_truth, class_index)
    else:
        labelled = _scan_class_folders(val_path, class_index)

    result = MapFileResult(output, 0)
    rows = []
    for name, label in labelled:
        image = _resolve_image(val_path, name)
        if image is None:
            result.dropped.setdefault("missing", []).append(name)
        elif verify_images and not _decodes(image):
            result.dropped.setdefault("unreadable", []).append(name)
        else:
            rows.append(f"{os.path.relpath(image, output.parent)}\t{label}\n")
    if not rows:
        raise ClipError(
            f"none of the {len(labelled)} images listed for {val_path} exist; check "
            "--imagenet_val_path and --ground_truth_file."
        )
    _write_atomically(output, "".join(rows))
    result.written = len(rows)
    _log_result(result)
    return result


def _default_ground_truth(val_path: Path) -> Path | None:
    for name in DEFAULT_GROUND_TRUTH_FILES:
        if (val_path / name).is_file():
            return val_path / name
    if any(entry.is_dir() for entry in val_path.iterdir()):
        return None
    raise ClipError(
        f"{val_path} has no class subfolders and no ground-truth file "
        f"({', '.join(DEFAULT_GROUND_TRUTH_FILES)}); pass --ground_truth_file."
    )


def _scan_class_folders(val_path: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    folders = sorted(entry for entry in val_path.iterdir() if entry.is_dir())
    unknown = [folder.name for folder in folders if folder.name not in class_index]
    if unknown:
        logger.warning("ignoring %d folders that are not ImageNet-1k WordNet ids, e.g. %s",
                       len(unknown), unknown[:MAX_LOGGED_EXAMPLES])
    labelled = []
    for folder in folders:
        if folder.name in class_index:
            for image in sorted(folder.iterdir()):
                if image.is_file() and not image.name.startswith("."):
                    labelled.append((f"{folder.name}/{image.name}", class_index[folder.name]))
    if not labelled:
        raise ClipError(
            f"no images in WordNet-id subfolders of {val_path} (such as n01440764/); pass "
            "--ground_truth_file for a flat folder."
        )
    return labelled


def _read_ground_truth(path: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    if not path.is_file():
        raise ClipError(f"ground-truth file {path} not found; check --ground_truth_file.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and lines[0].replace(" ", "").startswith("ImageId,PredictionString"):
        lines = lines[1:]
    labelled = []
    for line_number, line in enumerate(lines, start=1):
        name, label = _parse_ground_truth_line(path, line_number, line)
        labelled.append((name, _class_of(path, line_number, label, class_index)))
    return labelled


def _parse_ground_truth_line(path: Path, line_number: int, line: str) -> tuple[str, str]:
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError:
            record = ast.literal_eval(stripped)
        return str(record["filename"]), str(record["label"])
    fields = stripped.replace(",", " ").split()
    if len(fields) == 1:
        raise ClipError(
            f"{path}:{line_number}: a line with only a label ({stripped!r}) looks like the "
            "devkit's ILSVRC2012_validation_ground_truth.txt, whose ILSVRC2012_ID labels are "
            "in another class order; use LOC_val_solution.csv or 'file label' lines."
        )
    return fields[0], fields[1]


def _class_of(path: Path, line_number: int, label: str, class_index: dict[str, int]) -> int:
    if label in class_index:
        return class_index[label]
    if label.isdigit() and int(label) < len(class_index):
        return int(label)
    raise ClipError(
        f"{path}:{line_number}: label {label!r} is neither an ImageNet-1k WordNet id nor a class "
        f"index from 0 to {len(class_index) - 1}; fix the ground-truth file."
    )


def _resolve_image(val_path: Path, name: str) -> Path | None:
    image = val_path / name
    if image.is_file():
        return image
    if not image.suffix:
        for suffix in IMAGE_SUFFIXES:
            candidate = image.with_name(image.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _decodes(image: Path) -> bool:
    try:
        load_rgb(image)
    except ImageDecodeError:
        return False
    return True


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _log_result(result: MapFileResult) -> None:
    logger.info("wrote %d images to %s", result.written, result.output)
    for reason, names in result.dropped.items():
        logger.warning("dropped %d %s images, e.g. %s", len(names), reason,
                       names[:MAX_LOGGED_EXAMPLES])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip.data.preprocess",
        description="Write the ImageNet-1k validation map file (file<TAB>label per line).",
    )
    parser.add_argument("--imagenet_val_path", default="./data/imagenet",
                        help="ImageNet-1k validation folder (default: %(default)s)")
    parser.add_argument("--ground_truth_file", default=None,
                        help="Labels of a flat folder: JSON lines, LOC_val_solution.csv or "
                             "'file label' lines (default: found in the folder)")
    parser.add_argument("--output", default=None,
                        help=f"Map file to write (default: IMAGENET_VAL_PATH/{MAP_FILE})")
    parser.add_argument("--verify_images", action="store_true",
                        help="Also drop images that do not decode (reads every image)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_map_file(args.imagenet_val_path, args.ground_truth_file, args.output,
                       args.verify_images)
    except ClipError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
