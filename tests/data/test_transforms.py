"""Tests of clip.data.transforms: shapes, CLIP normalization, v1 and v2 agreement, bad values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from clip.data.transforms import CLIP_MEAN, CLIP_STD, eval_transform, train_transform
from clip.errors import ClipError


def photo_like(width: int = 120, height: int = 90) -> Image.Image:
    """Smooth random colours, upscaled from a coarse grid like the gradients of a photo."""
    rng = np.random.default_rng(3)
    coarse = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("version", [1, 2])
def test_outputs_are_normalized_squares(version: int) -> None:
    image = photo_like()
    for transform in (train_transform(48, version), eval_transform(48, version)):
        tensor = transform(image)
        assert type(tensor) is torch.Tensor
        assert tensor.shape == (3, 48, 48)
        assert tensor.dtype == torch.float32


def test_mean_colour_maps_to_zero() -> None:
    mean_colour = tuple(round(value * 255) for value in CLIP_MEAN)
    tensor = eval_transform(16)(Image.new("RGB", (20, 20), mean_colour))
    assert tensor.abs().max() < 0.01


def test_white_maps_to_one_minus_mean_over_std() -> None:
    tensor = train_transform(16)(Image.new("RGB", (20, 20), (255, 255, 255)))
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(tensor[:, 0, 0], expected, atol=1e-5)


def test_eval_v1_and_v2_agree_within_a_grey_level() -> None:
    image = photo_like()
    difference = (eval_transform(64, 1)(image) - eval_transform(64, 2)(image)).abs()
    # One grey level of 255, divided by the smallest standard deviation, plus rounding slack.
    assert difference.max() <= 1.01 / 255 / min(CLIP_STD)


def test_eval_crops_the_centre_of_the_long_side() -> None:
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 255
    tensor = eval_transform(20)(Image.fromarray(pixels))
    white = (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.allclose(tensor[0], torch.full((20, 20), white), atol=1e-4)


def test_train_crops_differ_between_calls() -> None:
    image = photo_like()
    transform = train_transform(32)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("factory", [train_transform, eval_transform])
def test_bad_resolution_raises(factory: Callable[[int], object]) -> None:
    with pytest.raises(ClipError, match="image_resolution"):
        factory(0)


def test_bad_version_raises() -> None:
    with pytest.raises(ClipError, match="version 3 is invalid"):
        train_transform(32, version=3)
