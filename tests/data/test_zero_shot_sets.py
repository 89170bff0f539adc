"""Tests of clip.data.zero_shot: shipped class names and templates, CIFAR-100, map-file sets."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_image

from clip.data.layout import MAP_FILE
from clip.data.zero_shot import load_class_prompts, load_zero_shot_set, read_wnids
from clip.errors import ClipError

CIFAR_CLASSES, _ = load_class_prompts("cifar100")


@pytest.mark.parametrize(("name", "num_classes", "num_templates"),
                         [("imagenet", 1000, 80), ("cifar100", 100, 18), ("digits", 10, 5)])
def test_shipped_prompts(name: str, num_classes: int, num_templates: int) -> None:
    classnames, templates = load_class_prompts(name)
    assert len(classnames) == num_classes
    assert len(templates) == num_templates
    for template in templates:
        assert template.count("{}") == 1, template
        assert template.format("cat") != template


def test_imagenet_names_follow_sorted_wnids() -> None:
    wnids = read_wnids()
    classnames, _ = load_class_prompts("imagenet")
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert (wnids[0], classnames[0]) == ("n01440764", "tench")
    assert (wnids[999], classnames[999]) == ("n15075141", "toilet paper")


def test_cifar_names_are_the_sorted_fine_labels() -> None:
    fine_labels = [name.replace(" ", "_") for name in CIFAR_CLASSES]
    assert fine_labels == sorted(fine_labels)
    assert "aquarium_fish" in fine_labels


def write_tiny_cifar(root: Path, labels: list[int], classes: list[str] = CIFAR_CLASSES) -> None:
    """Write cifar-100-python/test and meta in the real pickle format with a few images."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # Rows of 3072 bytes: the red, green and blue planes of a 32 x 32 image.
    data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    test = {"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels),
            "filenames": [f"image_{index}.png" for index in range(len(labels))],
            "batch_label": "testing batch 1 of 1"}
    meta = {"fine_label_names": [name.replace(" ", "_") for name in classes],
            "coarse_label_names": [f"superclass_{index}" for index in range(20)]}
    (folder / "test").write_bytes(pickle.dumps(test))
    (folder / "meta").write_bytes(pickle.dumps(meta))


def test_tiny_cifar100_loads(tmp_path: Path) -> None:
    write_tiny_cifar(tmp_path, [3, 0, 99])
    dataset, classnames, templates = load_zero_shot_set("cifar100", tmp_path, 48)
    assert len(dataset) == 3
    assert [label for _, label in dataset] == [3, 0, 99]
    image, _ = dataset[0]
    assert image.shape == (3, 48, 48)
    assert classnames[99] == "worm"
    assert templates[0] == "a photo of a {}."


def test_absent_cifar100_raises_at_once(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ClipError, match=r"cifar-100-python/test.*Download cifar-100-python"):
        load_zero_shot_set("cifar100", tmp_path, 32)
    assert time.perf_counter() - start < 5


def test_cifar_meta_with_other_classes_raises(tmp_path: Path) -> None:
    write_tiny_cifar(tmp_path, [0], classes=list(reversed(CIFAR_CLASSES)))
    with pytest.raises(ClipError, match="not the 100 CIFAR-100 fine labels"):
        load_zero_shot_set("cifar100", tmp_path, 32)


def test_damaged_cifar_file_raises(tmp_path: Path) -> None:
    write_tiny_cifar(tmp_path, [0])
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ClipError, match="are damaged"):
        load_zero_shot_set("cifar100", tmp_path, 32)


def test_map_file_set_errors(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match=f"map file .*{MAP_FILE} not found.*clip.data.digits"):
        load_zero_shot_set("digits", tmp_path, 32)
    (tmp_path / MAP_FILE).write_text("images/a.png\t10\n")
    with pytest.raises(ClipError, match=r":1: expected 'file<TAB>label' with a label from 0 to 9"):
        load_zero_shot_set("digits", tmp_path, 32)


def test_unreadable_listed_image_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "bad.png").write_text("not an image")
    (tmp_path / MAP_FILE).write_text("images/good.png\t1\nimages/bad.png\t2\n")
    dataset, _, _ = load_zero_shot_set("digits", tmp_path, 32)
    assert dataset[0][1] == 1
    with pytest.raises(ClipError, match="bad.png.*remove the line"):
        dataset[1]


def test_unknown_set_raises(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="zero-shot dataset 'mnist' is unknown"):
        load_zero_shot_set("mnist", tmp_path, 32)
