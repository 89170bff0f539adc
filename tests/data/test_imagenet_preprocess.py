"""Tests of clip.data.preprocess: both ImageNet folder layouts and the ground-truth formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import write_image

from clip.data.layout import MAP_FILE
from clip.data.preprocess import build_map_file, main
from clip.data.zero_shot import load_zero_shot_set, read_wnids
from clip.errors import ClipError

WNIDS = read_wnids()
TENCH, GOLDFISH, TOILET_PAPER = WNIDS[0], WNIDS[1], WNIDS[999]


def map_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_class_subfolders(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / TENCH / "ILSVRC2012_val_00000001.JPEG", image_format="JPEG")
    write_image(val / GOLDFISH / "ILSVRC2012_val_00000002.JPEG", image_format="JPEG")
    write_image(val / TOILET_PAPER / "ILSVRC2012_val_00000003.JPEG", image_format="JPEG")
    write_image(val / "not_a_class" / "stray.JPEG", image_format="JPEG")

    result = build_map_file(val)
    assert result.output == val / MAP_FILE
    assert result.written == 3
    assert map_lines(val / MAP_FILE) == [
        f"{TENCH}/ILSVRC2012_val_00000001.JPEG\t0",
        f"{GOLDFISH}/ILSVRC2012_val_00000002.JPEG\t1",
        f"{TOILET_PAPER}/ILSVRC2012_val_00000003.JPEG\t999",
    ]

    dataset, classnames, templates = load_zero_shot_set("imagenet", val, 32)
    assert len(dataset) == 3
    image, label = dataset[2]
    assert image.shape == (3, 32, 32)
    assert label == 999
    assert classnames[0] == "tench"
    assert len(templates) == 80


def test_flat_folder_with_kaggle_solution(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / "ILSVRC2012_val_00000001.JPEG", image_format="JPEG")
    write_image(val / "ILSVRC2012_val_00000002.JPEG", image_format="JPEG")
    (val / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{GOLDFISH} 10 20 30 40 {GOLDFISH} 1 2 3 4\n"
        f"ILSVRC2012_val_00000002,{TENCH} 5 6 7 8\n"
        f"ILSVRC2012_val_00000003,{TENCH} 5 6 7 8\n"
    )

    result = build_map_file(val)
    assert map_lines(val / MAP_FILE) == [
        "ILSVRC2012_val_00000001.JPEG\t1",
        "ILSVRC2012_val_00000002.JPEG\t0",
    ]
    assert result.dropped == {"missing": ["ILSVRC2012_val_00000003"]}


def test_json_lines_and_plain_pairs(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / "a.png")
    write_image(val / "b.png")
    records = [{"filename": "a.png", "label": 7}, {"filename": "b.png", "label": GOLDFISH},
               {"filename": "gone.png", "label": 3}]
    (val / "val_official.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    build_map_file(val)
    assert map_lines(val / MAP_FILE) == ["a.png\t7", "b.png\t1"]

    pairs = tmp_path / "labels.txt"
    pairs.write_text(f"a.png {TOILET_PAPER}\nb.png\t12\n")
    output = tmp_path / "maps" / "clean.csv"
    build_map_file(val, ground_truth_file=pairs, output=output)
    assert map_lines(output) == ["../val/a.png\t999", "../val/b.png\t12"]
    dataset, _, _ = load_zero_shot_set("imagenet", output, 16)
    assert [label for _, label in dataset] == [999, 12]


def test_verify_images_drops_unreadable(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / TENCH / "good.png")
    (val / TENCH / "broken.png").write_text("not an image")
    assert build_map_file(val).written == 2

    result = build_map_file(val, verify_images=True)
    assert result.written == 1
    assert result.dropped == {"unreadable": [f"{TENCH}/broken.png"]}


def test_devkit_ground_truth_raises(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / "ILSVRC2012_val_00000001.JPEG", image_format="JPEG")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n361\n")
    with pytest.raises(ClipError, match="ILSVRC2012_ID labels are in another class order"):
        build_map_file(val, tmp_path / "ILSVRC2012_validation_ground_truth.txt")


def test_unknown_label_raises(tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_image(val / "a.png")
    (tmp_path / "labels.txt").write_text("a.png n99999999\n")
    with pytest.raises(ClipError, match=r"labels.txt:1: label 'n99999999' is neither"):
        build_map_file(val, tmp_path / "labels.txt")


def test_flat_folder_without_labels_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "val" / "a.png")
    with pytest.raises(ClipError, match="no class subfolders and no ground-truth file"):
        build_map_file(tmp_path / "val")


def test_no_existing_image_raises(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "labels.txt").write_text("a.png 1\n")
    with pytest.raises(ClipError, match="none of the 1 images listed"):
        build_map_file(tmp_path / "val", tmp_path / "labels.txt")


def test_command_line_writes_map_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image(tmp_path / "val" / TENCH / "a.png")
    main(["--imagenet_val_path", str(tmp_path / "val"), "--output", str(tmp_path / "map.csv")])
    assert map_lines(tmp_path / "map.csv") == [f"val/{TENCH}/a.png\t0"]

    with pytest.raises(SystemExit) as exit_info:
        main(["--imagenet_val_path", str(tmp_path / "absent")])
    assert exit_info.value.code == 2
    assert "ImageNet validation folder" in capsys.readouterr().err
