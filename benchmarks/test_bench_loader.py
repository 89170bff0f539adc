"""Benchmark the training loader and the image transforms at 224 px on 300 generated JPEGs.

Run with:
    .venv/bin/python -m pytest benchmarks/test_bench_loader.py --benchmark-only \
        --benchmark-group-by=group

The JPEGs are 500 x 375 photo-like images (smooth colour fields with grain, quality 90), about
the size of a Conceptual Captions image. Two groups are measured:

- ``loader 224 px``: one epoch of ``build_train_loader`` (decode, random crop to 224 px,
  tokenize, batch) with 0, 1 and 2 DataLoader workers. Workers are persistent and started by
  the warm-up round, so the rounds time a steady epoch.
- ``transform 224 px``: decode and train transform of every image in the main process,
  torchvision transforms v1 (PIL) against v2 (uint8 tensors).

The main process runs with one torch thread, as DataLoader workers do. With the default
thread count, small resize kernels compete for the cores with the workers and with each other.

At the end of the module the images/s of each benchmark are written to the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.summary import write_summary
from clip.config import load_config
from clip.data import build_train_loader
from clip.data.images import load_rgb
from clip.data.transforms import train_transform

NUM_IMAGES = 300
IMAGE_SIZE = (500, 375)
RESOLUTION = 224
MICRO_BATCH = 25


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the JPEGs and a captions file in the Conceptual Captions layout."""
    folder = tmp_path_factory.mktemp("loader_bench")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for index in range(NUM_IMAGES):
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
        smooth = np.asarray(coarse.resize(IMAGE_SIZE, Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{index:04d}.jpg", quality=90)
        lines.append(f"{index:04d}.jpg\ta photo number {index} of a colourful scene")
    (folder / "img_cap.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rates(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Images/s by benchmark name, written to the terminal when the module ends."""
    measured: dict[str, float] = {}
    yield measured
    if not measured:
        return
    lines = [f"{name}: {rate:.0f} images/s (min round time)" for name, rate in measured.items()]
    write_summary(request.config, lines)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_bench_loader_epoch(benchmark: BenchmarkFixture, jpeg_folder: Path,
                            rates: dict[str, float], workers: int) -> None:
    config = load_config("CLIP_ViT-B-32_cc3m", {
        "captions_path": str(jpeg_folder / "img_cap.csv"),
        "image_path": str(jpeg_folder / "images"),
        "batch_size": MICRO_BATCH, "gradient_accumulation": 1, "device_iterations": 1,
        "dataloader_workers": workers, "async_dataloader": True, "device": "cpu",
    })
    loader = build_train_loader(config)
    assert len(loader) * loader.host_batch_size == NUM_IMAGES

    def run_epoch() -> int:
        shapes = {tuple(images.shape) for images, _ in loader}
        return len(shapes)

    benchmark.group = f"loader {RESOLUTION} px"
    assert benchmark.pedantic(run_epoch, rounds=3, warmup_rounds=1) == 1
    assert loader.skipped.total == 0
    if not benchmark.disabled:  # --benchmark-disable runs the target once, untimed
        rate = NUM_IMAGES / benchmark.stats.stats.min
        benchmark.extra_info["images_per_second"] = rate
        rates[f"loader, {workers} workers"] = rate


@pytest.mark.parametrize("version", [1, 2])
def test_bench_decode_and_transform(benchmark: BenchmarkFixture, jpeg_folder: Path,
                                    rates: dict[str, float], version: int) -> None:
    paths = sorted((jpeg_folder / "images").glob("*.jpg"))
    transform = train_transform(RESOLUTION, version)

    def run() -> torch.Size:
        for path in paths:
            tensor = transform(load_rgb(path))
        return tensor.shape

    benchmark.group = f"transform {RESOLUTION} px"
    shape = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert shape == (3, RESOLUTION, RESOLUTION)
    if not benchmark.disabled:
        rate = NUM_IMAGES / benchmark.stats.stats.min
        benchmark.extra_info["images_per_second"] = rate
        rates[f"decode + train transform v{version}"] = rate
