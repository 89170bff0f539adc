"""Tests of clip.data.digits: counts, split, captions, determinism and use by the loaders."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import tiny_config
from PIL import Image

from clip.data.digits import build_digits_set, main
from clip.data.layout import CAPTIONS_FILE, MAP_FILE
from clip.data.zero_shot import load_zero_shot_set
from clip.errors import ClipError

NUM_SCANS = 1797
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("digits")
    build_digits_set(output)
    return output


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_split_sizes_and_layouts(digits: Path) -> None:
    train_lines = (digits / "train" / CAPTIONS_FILE).read_text().splitlines()
    test_lines = (digits / "test" / MAP_FILE).read_text().splitlines()
    assert len(train_lines) + len(test_lines) == NUM_SCANS
    assert len(test_lines) == 360
    assert len(list((digits / "train" / "images").glob("*.png"))) == len(train_lines)
    assert len(list((digits / "test" / "images").glob("*.png"))) == len(test_lines)
    train_names = {line.split("\t")[0] for line in train_lines}
    test_names = {line.split("\t")[0].removeprefix("images/") for line in test_lines}
    assert not train_names & test_names


def test_test_split_is_stratified(digits: Path) -> None:
    test_lines = (digits / "test" / MAP_FILE).read_text().splitlines()
    per_class = Counter(int(line.split("\t")[1]) for line in test_lines)
    assert sorted(per_class) == list(range(10))
    assert min(per_class.values()) >= 35
    assert max(per_class.values()) <= 37


def test_captions_vary_and_name_the_digit(digits: Path) -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    lines = (digits / "train" / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines()
    for line in lines:
        name, caption = line.split("\t")
        target = targets[int(name.removesuffix(".png"))]
        words = caption.replace(",", "").split()
        assert NUMBER_WORDS[target] in words or str(target) in words, line
    sevens = {line.split("\t")[1] for line in lines if "seven" in line or "7" in line}
    assert len(sevens) >= 5


def test_images_are_grey_upscaled_scans(digits: Path) -> None:
    image = Image.open(next((digits / "train" / "images").glob("*.png")))
    assert image.size == (32, 32)
    assert image.mode == "L"
    assert image.getextrema()[1] > 200


def test_build_is_deterministic_and_idempotent(digits: Path, tmp_path: Path) -> None:
    before = file_hashes(digits)
    build_digits_set(tmp_path)
    assert file_hashes(tmp_path) == before
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.png")}
    build_digits_set(tmp_path)
    assert file_hashes(tmp_path) == before
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.png")} == mtimes


def test_train_split_feeds_the_loader(digits: Path) -> None:
    pytest.importorskip("clip.tokenizer", reason="clip.tokenizer is not available yet")
    from clip.data import build_train_loader

    config = tiny_config(captions_path=str(digits / "train" / CAPTIONS_FILE),
                         image_path=str(digits / "train" / "images"), batch_size=64)
    loader = build_train_loader(config)
    assert loader.num_samples == NUM_SCANS - 360
    images, tokens = next(iter(loader))
    assert images.shape == (64, 3, 32, 32)
    assert tokens.shape == (64, 77)
    assert loader.skipped.total == 0


def test_test_split_feeds_zero_shot(digits: Path) -> None:
    dataset, classnames, templates = load_zero_shot_set("digits", digits / "test", 32)
    assert len(dataset) == 360
    assert classnames == NUMBER_WORDS
    image, label = dataset[0]
    assert image.shape == (3, 32, 32)
    assert 0 <= label <= 9
    assert templates[0].format("seven") == "a handwritten seven."


def test_command_line_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--output", str(tmp_path / "digits"), "--image_size", "16"])
    assert Image.open(tmp_path / "digits" / "test" / "images" / "0021.png").size == (16, 16)
    with pytest.raises(ClipError, match="image_size=4 is below"):
        build_digits_set(tmp_path / "small", image_size=4)
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path / "small"), "--image_size", "4"])
    assert "image_size=4" in capsys.readouterr().err
