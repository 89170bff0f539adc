"""Image transforms of CLIP training and evaluation, from an RGB PIL image to a normalized tensor.

Both take the RGB images of :func:`clip.data.images.load_rgb` and return float32 tensors of
shape (3, R, R) normalized with CLIP's mean and standard deviation.

The default pipelines use torchvision's transforms v2 on uint8 tensors: the image is turned
into a tensor first and resized there with antialiased bicubic interpolation, which
``benchmarks/test_bench_loader.py`` measures against transforms v1 (PIL resize, then
``ToTensor``). The tensor resize differs from PIL's by at most one grey level of 255, because
torchvision's antialiased bicubic kernel uses PIL's coefficient (a = -0.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as transforms_v1
from torchvision.transforms import v2

from clip.errors import ClipError

# Per-channel RGB mean and standard deviation of OpenAI CLIP's training images.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# RandomResizedCrop keeps 90-100% of the image area, as OpenAI's and Graphcore's CLIP do.
TRAIN_CROP_SCALE = (0.9, 1.0)

BICUBIC = v2.InterpolationMode.BICUBIC
Transform = Callable[[Image.Image], torch.Tensor]


def train_transform(resolution: int, version: int = 2) -> Transform:
    """Return the training transform: a random crop of 90-100% of the area, resized to R x R.

    Args:
        resolution: output height and width R in pixels.
        version: 2 for torchvision transforms v2 on tensors (the default, faster), 1 for
            transforms v1 on PIL images.
    """
    _check_arguments(resolution, version)
    if version == 1:
        return transforms_v1.Compose([
            transforms_v1.RandomResizedCrop(
                resolution, scale=TRAIN_CROP_SCALE, interpolation=BICUBIC
            ),
            transforms_v1.ToTensor(),
            transforms_v1.Normalize(CLIP_MEAN, CLIP_STD),
        ])
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(
            resolution, scale=TRAIN_CROP_SCALE, interpolation=BICUBIC, antialias=True
        ),
        *_to_normalized_float(),
    ])


def eval_transform(resolution: int, version: int = 2) -> Transform:
    """Return the evaluation transform: resize the short side to R (bicubic), centre crop R x R.

    Args:
        resolution: output height and width R in pixels.
        version: 2 for torchvision transforms v2 on tensors (the default), 1 for v1 on PIL.
    """
    _check_arguments(resolution, version)
    if version == 1:
        return transforms_v1.Compose([
            transforms_v1.Resize(resolution, interpolation=BICUBIC),
            transforms_v1.CenterCrop(resolution),
            transforms_v1.ToTensor(),
            transforms_v1.Normalize(CLIP_MEAN, CLIP_STD),
        ])
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resolution, interpolation=BICUBIC, antialias=True),
        v2.CenterCrop(resolution),
        *_to_normalized_float(),
    ])


def _to_normalized_float() -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CLIP_MEAN, CLIP_STD),
        v2.ToPureTensor(),
    ]


def _check_arguments(resolution: int, version: int) -> None:
    if resolution <= 0:
        raise ClipError(
            f"image resolution {resolution} must be positive; change --image_resolution."
        )
    if version not in (1, 2):
        raise ClipError(f"transforms version {version} is invalid; use 1 or 2.")
