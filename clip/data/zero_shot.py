"""Zero-shot classification sets: labelled images, class names and prompt templates.

Class names and templates ship as data files in this package:

- ``zero_shot_imagenet.json``: OpenAI's curated names of the 1,000 ImageNet-1k classes, in the
  standard class order (sorted WordNet ids, ``imagenet_wnids.txt``), and their 80 templates,
  as open_clip 3.3.0 ships them in ``open_clip/zero_shot_metadata.py``. The WordNet ids are
  timm's ``imagenet_synsets.txt``.
- ``zero_shot_cifar100.json``: the 100 CIFAR-100 fine labels and 18 templates, from OpenAI
  CLIP's ``data/prompts.md``.
- ``zero_shot_digits.json``: the names zero to nine and a few templates for the digits set.

Templates contain one ``{}`` where the class name goes: ``template.format(classname)``.

ImageNet and digits are read from a map file (``val_official_clean.csv``: one
``file<TAB>label`` per line, files relative to the map file's folder), as written by
``python -m clip.data.preprocess`` and ``python -m clip.data.digits``. CIFAR-100 is read with
torchvision from its ``cifar-100-python`` folder and is never downloaded.
"""

from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100

from clip.data.images import ImageDecodeError, load_rgb
from clip.data.layout import MAP_FILE
from clip.data.transforms import Transform, eval_transform
from clip.errors import ClipError

ZERO_SHOT_SETS = ("imagenet", "cifar100", "digits")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_MAP_FILE_HELP = {
    "imagenet": "run python -m clip.data.preprocess --imagenet_val_path FOLDER",
    "digits": "run python -m clip.data.digits --output data/digits and use data/digits/test",
}


def load_class_prompts(name: str) -> tuple[list[str], list[str]]:
    """Return the class names (in label order) and the prompt templates of a zero-shot set."""
    _check_name(name)
    text = resources.files("clip.data").joinpath(f"zero_shot_{name}.json").read_text("utf-8")
    prompts = json.loads(text)
    return list(prompts["classnames"]), list(prompts["templates"])


def read_wnids() -> list[str]:
    """Return the 1,000 ImageNet-1k WordNet ids in the standard class order (sorted)."""
    text = resources.files("clip.data").joinpath("imagenet_wnids.txt").read_text("utf-8")
    return text.split()


def load_zero_shot_set(name: str, path: str | Path,
                       resolution: int) -> tuple[Dataset, list[str], list[str]]:
    """Load a zero-shot set with the evaluation transform.

    Args:
        name: imagenet, cifar100 or digits.
        path: the folder of the map file (or the map file) for imagenet and digits, the
            folder that contains ``cifar-100-python`` for cifar100.
        resolution: image height and width R in pixels.

    Returns:
        The dataset of (image (3, R, R), label) pairs, the class names in label order and the
        templates, each with one ``{}`` for the class name.
    """
    classnames, templates = load_class_prompts(name)
    transform = eval_transform(resolution)
    if name == "cifar100":
        dataset: Dataset = load_cifar100(path, transform, classnames)
    else:
        dataset = LabelledImages.from_map_file(find_map_file(name, path), transform,
                                               len(classnames))
    return dataset, classnames, templates


def _check_name(name: str) -> None:
    if name not in ZERO_SHOT_SETS:
        raise ClipError(
            f"zero-shot dataset '{name}' is unknown; set --zeroshot_dataset to one of "
            f"{', '.join(ZERO_SHOT_SETS)}."
        )


def find_map_file(name: str, path: str | Path) -> Path:
    """Return ``path`` if it is a file, else ``path/val_official_clean.csv``; it must exist."""
    path = Path(path)
    map_file = path if path.is_file() else path / MAP_FILE
    if not map_file.is_file():
        raise ClipError(
            f"map file {map_file} not found for the {name} zero-shot set; set --zeroshot_path "
            f"to its folder or {_MAP_FILE_HELP.get(name, 'create it')}."
        )
    return map_file


def read_map_file(map_file: Path, num_classes: int) -> list[tuple[str, int]]:
    """Read ``file<TAB>label`` lines; raise ClipError on a malformed line or a bad label."""
    entries = []
    lines = map_file.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, _, label = line.rpartition("\t")
        if not name or not label.strip().isdigit() or int(label) >= num_classes:
            raise ClipError(
                f"{map_file}:{line_number}: expected 'file<TAB>label' with a label from 0 to "
                f"{num_classes - 1}, got {line[:80]!r}; regenerate the map file."
            )
        entries.append((name, int(label)))
    if not entries:
        raise ClipError(f"map file {map_file} lists no images; regenerate it.")
    return entries


class LabelledImages(Dataset):
    """Images listed in a map file with their labels; items are (image (3, R, R), label)."""

    def __init__(self, root: Path, entries: list[tuple[str, int]], transform: Transform,
                 source: str = "") -> None:
        self.root = root
        self.entries = entries
        self.transform = transform
        self.source = source

    @classmethod
    def from_map_file(cls, map_file: Path, transform: Transform,
                      num_classes: int) -> LabelledImages:
        entries = read_map_file(map_file, num_classes)
        return cls(map_file.parent, entries, transform, str(map_file))

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        name, label = self.entries[index]
        try:
            image = load_rgb(self.root / name)
        except ImageDecodeError as error:
            raise ClipError(
                f"{error} (listed in {self.source}); remove the line or rebuild the map file "
                "with python -m clip.data.preprocess --verify_images."
            ) from error
        return self.transform(image), label


class CIFAR100TestSplit(CIFAR100):
    """torchvision's CIFAR-100 test split, checking only that its two files are present.

    torchvision (0.29) checks the MD5 of the train and the test pickle before loading either
    split, so the test split cannot load without the 150 MB train file. This class checks
    only that ``test`` and ``meta`` exist. A damaged file still fails when it is unpickled,
    and the same check lets the tests load a small set written in the real format.
    """

    meta = {**CIFAR100.meta, "md5": None}

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.test_list)


def load_cifar100(root: str | Path, transform: Transform,
                  classnames: list[str]) -> CIFAR100TestSplit:
    """Load the CIFAR-100 test split from ``root/cifar-100-python``; never download it."""
    folder = Path(root) / CIFAR100.base_folder
    missing = [str(folder / name) for name in ("test", "meta") if not (folder / name).is_file()]
    if missing:
        raise ClipError(
            f"CIFAR-100 test set not found: missing {', '.join(missing)}. Download "
            f"cifar-100-python.tar.gz from {CIFAR_URL} and extract it into {root}, or set "
            "--zeroshot_path to the folder that contains cifar-100-python."
        )
    try:
        dataset = CIFAR100TestSplit(root, train=False, download=False, transform=transform)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise ClipError(
            f"CIFAR-100 files in {folder} are damaged ({error!r}); extract them again."
        ) from error
    found = [name.replace("_", " ") for name in dataset.classes]
    if found != classnames:
        raise ClipError(
            f"{folder / 'meta'} lists classes {found[:5]}..., not the 100 CIFAR-100 fine labels "
            "in their standard order; extract the original archive again."
        )
    return dataset

