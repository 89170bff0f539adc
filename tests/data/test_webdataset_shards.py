"""Tests of webdataset shards: listing, per-replica shards, bad samples, fixed epoch length."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import webdataset
from data_helpers import tiny_config
from PIL import Image

from clip.data import TrainLoader, build_train_loader
from clip.data.report import EMPTY_CAPTION, INCOMPLETE_SAMPLE, UNREADABLE_IMAGE
from clip.data.shards import expand_shards, list_shards
from clip.errors import ClipError

tokenizer = pytest.importorskip(
    "clip.tokenizer", reason="clip.tokenizer is not available yet; the loader tokenizes captions"
)


def jpeg_bytes(seed: int) -> bytes:
    image = Image.new("RGB", (20, 14), (seed * 7 % 256, seed * 13 % 256, 90))
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG")
    return encoded.getvalue()


def write_shard(path: Path, first: int, count: int, extra: list[dict] | None = None) -> None:
    """Write ``count`` samples keyed like img2dataset (000000017.jpg + .txt) and ``extra``."""
    with webdataset.TarWriter(str(path)) as writer:
        for index in range(first, first + count):
            writer.write({
                "__key__": f"{index:09d}",
                "jpg": jpeg_bytes(index),
                "txt": f"caption number {index}".encode(),
            })
        for sample in extra or []:
            writer.write(sample)


def sample_rows(loader: TrainLoader, count: int) -> list[int]:
    tokens = tokenizer.tokenize([f"caption number {index}" for index in range(count)])
    rows = {row.numpy().tobytes(): index for index, row in enumerate(tokens)}
    return [rows[ids.numpy().tobytes()] for _, batch in loader for ids in batch]


@pytest.fixture
def shard_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(4):
        write_shard(folder / f"{shard:05d}.tar", shard * 6, 6)
    return folder


def test_list_shards_counts_complete_samples(tmp_path: Path) -> None:
    write_shard(tmp_path / "00000.tar", 0, 3, extra=[
        {"__key__": "no_caption", "jpg": jpeg_bytes(1)},
        {"__key__": "no_image", "txt": b"lonely caption"},
    ])
    shard_set = list_shards(str(tmp_path / "00000.tar"))
    assert shard_set.sample_counts == [3]
    assert shard_set.skipped.counts[INCOMPLETE_SAMPLE] == 2


def test_brace_pattern_and_folder_expand_alike(shard_folder: Path) -> None:
    from_pattern = expand_shards(str(shard_folder / "{00000..00003}.tar"))
    assert from_pattern == expand_shards(str(shard_folder))
    assert len(from_pattern) == 4


def test_missing_shard_raises(shard_folder: Path) -> None:
    with pytest.raises(ClipError, match="00004.tar"):
        expand_shards(str(shard_folder / "{00000..00004}.tar"))


def test_shard_loader_batches(shard_folder: Path) -> None:
    config = tiny_config(captions_path=str(shard_folder), batch_size=2, gradient_accumulation=2)
    loader = build_train_loader(config)
    assert loader.num_samples == 24
    assert len(loader) == 6
    batches = list(loader)
    assert len(batches) == 6
    for images, tokens in batches:
        assert images.shape == (4, 3, 32, 32)
        assert tokens.shape == (4, 77)
        assert tokens.dtype == torch.int64


def test_replicas_read_their_own_shards(shard_folder: Path) -> None:
    pattern = str(shard_folder / "{00000..00003}.tar")
    config = tiny_config(captions_path=pattern, batch_size=4, dataloader_workers=2)
    per_rank = []
    for rank in range(2):
        loader = build_train_loader(config, rank=rank, world_size=2)
        assert len(loader) == 3
        per_rank.append(set(sample_rows(loader, 24)))
    # Rank 0 has shards 0 and 2 (rows 0-5, 12-17), rank 1 has shards 1 and 3. Each worker
    # streams its shard without end, so an epoch may repeat a sample and miss another.
    assert per_rank[0] <= set(range(0, 6)) | set(range(12, 18))
    assert per_rank[1] <= set(range(6, 12)) | set(range(18, 24))
    assert len(per_rank[0]) >= 6
    assert len(per_rank[1]) >= 6


def test_epochs_reshuffle_by_seed(shard_folder: Path) -> None:
    config = tiny_config(captions_path=str(shard_folder), batch_size=4)
    first, second = build_train_loader(config), build_train_loader(config)
    orders = {}
    for epoch in (0, 1):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        orders[epoch] = sample_rows(first, 24)
        assert orders[epoch] == sample_rows(second, 24)
    assert sorted(orders[0]) == list(range(24))
    assert orders[0] != orders[1]


def test_persistent_worker_sees_set_epoch(shard_folder: Path) -> None:
    reference = build_train_loader(tiny_config(captions_path=str(shard_folder), batch_size=4))
    config = tiny_config(captions_path=str(shard_folder), batch_size=4, dataloader_workers=1,
                         async_dataloader=True)
    loader = build_train_loader(config)
    for epoch in (0, 1, 0):
        reference.set_epoch(epoch)
        loader.set_epoch(epoch)
        assert sample_rows(loader, 24) == sample_rows(reference, 24), epoch


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    write_shard(tmp_path / "00000.tar", 0, 6, extra=[
        {"__key__": "broken", "jpg": b"not a jpeg", "txt": b"a caption"},
        {"__key__": "silent", "jpg": jpeg_bytes(2), "txt": b"  "},
    ])
    config = tiny_config(captions_path=str(tmp_path / "00000.tar"), batch_size=4,
                         dataloader_workers=1)
    loader = build_train_loader(config)
    assert loader.num_samples == 8
    assert len(loader) == 2
    batches = list(loader)
    assert [images.shape[0] for images, _ in batches] == [4, 4]
    assert loader.skipped.counts[UNREADABLE_IMAGE] == 1
    assert loader.skipped.counts[EMPTY_CAPTION] == 1
    assert "00000.tar:broken" in loader.skipped.examples[UNREADABLE_IMAGE]


def test_fewer_shards_than_replicas_raises(tmp_path: Path) -> None:
    write_shard(tmp_path / "00000.tar", 0, 8)
    config = tiny_config(captions_path=str(tmp_path / "00000.tar"), batch_size=2)
    with pytest.raises(ClipError, match="1 webdataset shards cannot give each of 2 replicas"):
        build_train_loader(config, rank=0, world_size=2)


def test_all_samples_unreadable_raises(tmp_path: Path) -> None:
    with webdataset.TarWriter(str(tmp_path / "00000.tar")) as writer:
        for index in range(3):
            writer.write({"__key__": f"{index}", "jpg": b"junk", "txt": b"caption"})
    config = tiny_config(captions_path=str(tmp_path / "00000.tar"), batch_size=2)
    loader = build_train_loader(config)
    with pytest.raises(ClipError, match="no readable sample in webdataset shards"):
        next(iter(loader))
