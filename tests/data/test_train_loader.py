"""Tests of build_train_loader on image-caption folders: shapes, shuffling, shards, skips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from data_helpers import tiny_config, write_truncated_jpeg

from clip.data import TrainLoader, build_train_loader
from clip.data.dataset import MAX_ATTEMPTS
from clip.data.report import MISSING_IMAGE, UNREADABLE_IMAGE
from clip.errors import ClipError

tokenizer = pytest.importorskip(
    "clip.tokenizer", reason="clip.tokenizer is not available yet; the loader tokenizes captions"
)

CaptionSet = Callable[..., tuple[Path, Path]]


def caption_rows(count: int) -> dict[bytes, int]:
    """Map the token ids of 'caption number N' to N, to identify the rows in a batch."""
    tokens = tokenizer.tokenize([f"caption number {index}" for index in range(count)])
    return {row.numpy().tobytes(): index for index, row in enumerate(tokens)}


def epoch_rows(loader: TrainLoader, rows: dict[bytes, int]) -> list[int]:
    return [rows[tokens.numpy().tobytes()] for _, batch in loader for tokens in batch]


def test_host_batch_shape(caption_set: CaptionSet) -> None:
    captions, images = caption_set(26)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=3,
                         gradient_accumulation=2, device_iterations=2)
    loader = build_train_loader(config)

    assert loader.host_batch_size == 12
    assert len(loader) == 2
    assert loader.num_samples == 26
    batches = list(loader)
    assert len(batches) == 2
    for images_batch, tokens in batches:
        assert images_batch.shape == (12, 3, 32, 32)
        assert images_batch.dtype == torch.float32
        assert tokens.shape == (12, 77)
        assert tokens.dtype == torch.int64
    assert loader.stats.batches == 2
    assert loader.stats.samples == 24


def test_epoch_order_is_seeded(caption_set: CaptionSet) -> None:
    captions, images = caption_set(16)
    rows = caption_rows(16)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=4)
    first, second = build_train_loader(config), build_train_loader(config)

    first.set_epoch(0)
    second.set_epoch(0)
    epoch_0 = epoch_rows(first, rows)
    assert epoch_0 == epoch_rows(second, rows)
    assert sorted(epoch_0) == list(range(16))
    first.set_epoch(1)
    assert epoch_rows(first, rows) != epoch_0
    first.set_epoch(0)
    assert epoch_rows(first, rows) == epoch_0


def test_replicas_read_disjoint_shards(caption_set: CaptionSet) -> None:
    captions, images = caption_set(21)
    rows = caption_rows(21)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=5)
    seen = []
    for rank in range(2):
        loader = build_train_loader(config, rank=rank, world_size=2)
        assert len(loader) == 2
        seen.append(epoch_rows(loader, rows))
    assert len(seen[0]) == len(seen[1]) == 10
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0])) == 10


def test_bad_images_are_replaced_and_counted_in_workers(caption_set: CaptionSet) -> None:
    captions, images = caption_set(
        12, extra_lines=("cut.jpg\ttruncated", "text.jpg\tnot an image", "gone.jpg\tmissing")
    )
    write_truncated_jpeg(images / "cut.jpg")
    (images / "text.jpg").write_text("plain text")
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=2,
                         gradient_accumulation=2, dataloader_workers=2)
    loader = build_train_loader(config)

    assert loader.num_samples == 14
    assert loader.skipped.counts[MISSING_IMAGE] == 1
    for epoch in range(2):
        loader.set_epoch(epoch)
        shapes = {tuple(images_batch.shape) for images_batch, _ in loader}
        assert shapes == {(4, 3, 32, 32)}
    assert loader.skipped.counts[UNREADABLE_IMAGE] == 2
    examples = " ".join(loader.skipped.examples[UNREADABLE_IMAGE])
    assert "cut.jpg" in examples
    assert "text.jpg" in examples
    assert "unreadable image: 2" in loader.skipped.summary()


def test_all_images_unreadable_raises(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    lines = []
    for index in range(4):
        (tmp_path / "images" / f"{index}.jpg").write_text("not an image")
        lines.append(f"{index}.jpg\tcaption")
    (tmp_path / "img_cap.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(captions_path=str(tmp_path / "img_cap.csv"),
                         image_path=str(tmp_path / "images"))
    loader = build_train_loader(config)
    with pytest.raises(ClipError, match=f"{MAX_ATTEMPTS} rows in a row failed to load"):
        next(iter(loader))


def test_long_caption_is_truncated_or_replaced(caption_set: CaptionSet) -> None:
    long_caption = " ".join(["word"] * 100)
    captions, images = caption_set(4, extra_lines=(f"000.jpg\t{long_caption}",))
    for truncate, expected_failures in ((True, 0), (False, 1)):
        config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=5,
                             truncate=truncate)
        loader = build_train_loader(config)
        for _ in loader:
            pass
        assert loader.skipped.total == expected_failures, truncate


def test_too_few_samples_raises(caption_set: CaptionSet) -> None:
    captions, images = caption_set(5)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=3,
                         gradient_accumulation=2)
    with pytest.raises(ClipError, match="5 usable samples, fewer than one host batch of 6"):
        build_train_loader(config)


def test_rank_outside_world_raises(caption_set: CaptionSet) -> None:
    captions, images = caption_set(4)
    config = tiny_config(captions_path=str(captions), image_path=str(images))
    with pytest.raises(ClipError, match="rank=2 is outside 0..1"):
        build_train_loader(config, rank=2, world_size=2)


def test_measure_rate_leaves_stats(caption_set: CaptionSet) -> None:
    captions, images = caption_set(12)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=4)
    loader = build_train_loader(config)
    assert loader.measure_rate() > 0
    assert loader.stats.batches == 0
    list(loader)
    assert loader.stats.batches == 3
    assert loader.stats.wait_seconds > 0


def test_persistent_workers_follow_set_epoch(caption_set: CaptionSet) -> None:
    captions, images = caption_set(8)
    rows = caption_rows(8)
    config = tiny_config(captions_path=str(captions), image_path=str(images), batch_size=4,
                         dataloader_workers=1, async_dataloader=True)
    loader = build_train_loader(config)
    reference = build_train_loader(tiny_config(
        captions_path=str(captions), image_path=str(images), batch_size=4
    ))
    for epoch in range(2):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert epoch_rows(loader, rows) == epoch_rows(reference, rows)
