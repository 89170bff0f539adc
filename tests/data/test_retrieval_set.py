"""Tests of clip.data.retrieval: captions grouped per image, flat caption index, batching."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import tiny_config, write_image
from torch.utils.data import DataLoader

from clip.data import load_retrieval_set
from clip.data.report import MISSING_IMAGE
from clip.data.retrieval import collate_retrieval
from clip.errors import ClipError


@pytest.fixture
def grouped_captions(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "images" / name)
    lines = ["a.png\ta first caption of a", "b.png\tthe only caption of b",
             "a.png\ta second caption of a", "gone.png\tno image", "c.png\tc, with a comma"]
    (tmp_path / "img_cap.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_captions_are_grouped_per_image(grouped_captions: Path) -> None:
    config = tiny_config(captions_path=str(grouped_captions / "img_cap.csv"),
                         image_path=str(grouped_captions / "images"))
    dataset = load_retrieval_set(config)

    assert len(dataset) == 3
    assert [Path(path).name for path in dataset.image_paths] == ["a.png", "b.png", "c.png"]
    assert dataset.captions[0] == ["a first caption of a", "a second caption of a"]
    image, captions = dataset[2]
    assert image.shape == (3, 32, 32)
    assert captions == ["c, with a comma"]
    assert dataset.skipped.counts[MISSING_IMAGE] == 1

    texts, image_indices = dataset.flat_captions()
    assert len(texts) == 4
    assert image_indices == [0, 0, 1, 2]


def test_paths_override_config_and_batch(grouped_captions: Path) -> None:
    dataset = load_retrieval_set(tiny_config(), captions_path=str(grouped_captions / "img_cap.csv"),
                                 image_path=str(grouped_captions / "images"))
    images, captions = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_retrieval)))
    assert images.shape == (2, 3, 32, 32)
    assert captions == [["a first caption of a", "a second caption of a"],
                        ["the only caption of b"]]


def test_unreadable_image_raises(grouped_captions: Path) -> None:
    (grouped_captions / "images" / "b.png").write_text("not an image")
    dataset = load_retrieval_set(tiny_config(), str(grouped_captions / "img_cap.csv"),
                                 str(grouped_captions / "images"))
    with pytest.raises(ClipError, match="b.png.*remove the image's rows"):
        dataset[1]


def test_webdataset_shards_raise(tmp_path: Path) -> None:
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(ClipError, match="is a webdataset shard set, which has no captions table"):
        load_retrieval_set(tiny_config(captions_path=str(tmp_path / "00000.tar")))
