"""Tests of clip.data.images: every PIL mode to RGB, EXIF orientation, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_image, write_truncated_jpeg
from PIL import Image

from clip.data.images import ImageDecodeError, load_rgb
from clip.data.transforms import eval_transform, train_transform

EXIF_ORIENTATION = 0x0112
# Orientation 6: the camera was turned, and the image must be rotated 90 degrees clockwise.
ROTATE_CLOCKWISE = 6


def pixel(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, int, int]:
    return tuple(int(value) for value in np.asarray(image)[y, x])


def test_rgb_png_keeps_pixels(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2), (10, 20, 30)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (3, 2)
    assert pixel(image) == (10, 20, 30)


def test_grey_modes_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 100).save(tmp_path / "l.png")
    Image.new("1", (2, 2), 1).save(tmp_path / "bilevel.png")
    assert pixel(load_rgb(tmp_path / "l.png")) == (100, 100, 100)
    assert pixel(load_rgb(tmp_path / "bilevel.png")) == (255, 255, 255)


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    Image.new("LA", (2, 2), (40, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(tmp_path / "rgba.png")
    for name in ("la.png", "rgba.png"):
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB"
        assert pixel(image) == (255, 255, 255), name


def test_half_transparent_black_is_grey(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (0, 0, 0, 128)).save(tmp_path / "half.png")
    red, green, blue = pixel(load_rgb(tmp_path / "half.png"))
    assert 125 <= red <= 129
    assert red == green == blue


def test_opaque_rgba_keeps_colour(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (200, 100, 50, 255)).save(tmp_path / "opaque.png")
    assert pixel(load_rgb(tmp_path / "opaque.png")) == (200, 100, 50)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    palette_image.save(tmp_path / "p.png", transparency=1)
    image = load_rgb(tmp_path / "p.png")
    assert image.mode == "RGB"
    assert pixel(image, 0) == (255, 0, 0)
    assert pixel(image, 1) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    image = load_rgb(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB"
    assert min(pixel(image)) >= 250


def test_16_bit_grey_is_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    image = load_rgb(tmp_path / "grey16.png")
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32_bit_and_float_grey_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(tmp_path / "grey32.tif")
    Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)).save(tmp_path / "float.tif")
    assert np.asarray(load_rgb(tmp_path / "grey32.tif"))[0, :, 0].tolist() == [0, 255]
    assert np.asarray(load_rgb(tmp_path / "float.tif"))[0, :, 0].tolist() == [0, 128]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Left half red, right half blue; turned clockwise, red ends up on top.
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_CLOCKWISE
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    image = load_rgb(tmp_path / "rotated.jpg")
    assert image.size == (10, 20)
    top_red, _, top_blue = pixel(image, 5, 2)
    bottom_red, _, bottom_blue = pixel(image, 5, 17)
    assert top_red > 200 and top_blue < 60
    assert bottom_blue > 200 and bottom_red < 60


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    path = write_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        load_rgb(path)


def test_non_image_and_missing_file_raise(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        load_rgb(tmp_path / "text.jpg")
    with pytest.raises(ImageDecodeError, match="absent.jpg"):
        load_rgb(tmp_path / "absent.jpg")


def test_bytes_decode_like_files(tmp_path: Path) -> None:
    path = write_image(tmp_path / "image.png")
    assert load_rgb(path.read_bytes()).tobytes() == load_rgb(path).tobytes()


@pytest.mark.parametrize("size", [(1, 1), (1, 10), (10, 1)])
def test_tiny_and_thin_images_become_square(tmp_path: Path, size: tuple[int, int]) -> None:
    path = write_image(tmp_path / "thin.png", size=size)
    image = load_rgb(path)
    for transform in (train_transform(32), eval_transform(32)):
        tensor = transform(image)
        assert tensor.shape == (3, 32, 32)
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()
