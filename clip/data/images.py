"""Decode image files into upright 8-bit RGB PIL images, whatever their mode.

Every image goes through :func:`to_rgb` after decoding:

- EXIF orientation is applied first (``ImageOps.exif_transpose``), so a photo taken with a
  rotated camera comes out upright and with its displayed width and height.
- Transparent images (LA, RGBA, PA, and P or L or RGB with a transparency key) are composited
  over a white background. A plain ``convert("RGB")`` would keep whatever colour sits under
  the transparent pixels, which is often black.
- 16- and 32-bit integer greyscale (I;16, I;16B, I) is scaled to 8 bit by 255/65535, because
  PIL's own conversion (Pillow 13) clips every value above 255 to white. Values of mode I
  above 65535 become white. Float greyscale (F) is read as 0..1 when its maximum is at most 1,
  else as 0..255.
- Every other mode (1, L, P, CMYK, YCbCr, ...) uses PIL's conversion to RGB.

Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False, so that a half
downloaded image is skipped instead of trained on with a grey lower half.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
# Largest value of 16-bit samples, scaled to the 8-bit maximum 255.
UINT16_MAX = 65535
_INTEGER_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageDecodeError(Exception):
    """An image file that is missing, truncated, corrupt or in a mode that cannot become RGB."""


def load_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode an image file (a path or its bytes) into an upright RGB image.

    Raises:
        ImageDecodeError: the file is missing, unreadable, truncated or not an image; the
            message names the file and PIL's reason.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # OSError covers missing files, truncated data and UnidentifiedImageError; PIL's
        # plugins raise ValueError or SyntaxError on some corrupt headers.
        raise ImageDecodeError(f"cannot decode image {name}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` upright and in RGB mode; see the module docstring for each mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _INTEGER_GREY_MODES:
        return _scale_integer_grey(image).convert("RGB")
    if image.mode == "F":
        return _scale_float_grey(image).convert("RGB")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if _has_alpha(image):
        return _composite_on_white(image)
    return image.convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in {"LA", "RGBA", "PA", "La", "RGBa"} or "transparency" in image.info


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_integer_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(values * 255.0 / UINT16_MAX, 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def _scale_float_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and finite.max() <= 1.0:
        values = values * 255.0
    scaled = np.clip(np.nan_to_num(values), 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))
