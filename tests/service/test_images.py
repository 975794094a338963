"""The normalization core, on real test images in every accepted format and in awkward modes."""

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from contract.metadata import InputSpec
from service.inference.images import DecodeLimits, decode_image, has_light_background, normalize_image, prepare_image
from service.settings import Settings
from tests.conftest import png_bytes

GRAY = InputSpec((28, 28), "grayscale", invert_light_background=True)
RGB = InputSpec((32, 32, 3), "rgb", invert_light_background=False)
LIMIT = Settings().max_image_pixels
LIMITS = DecodeLimits.from_settings(Settings())


@pytest.fixture(scope="module")
def garment(fashion):
    return fashion.x_test[0]  # an ankle boot, light on black


def test_a_dataset_png_passes_through_with_exactly_its_pixels(garment):
    array = prepare_image(png_bytes(garment), GRAY, LIMITS)
    assert array.dtype == np.float32 and array.shape == (28, 28)
    assert np.array_equal(array, garment.astype(np.float32) / np.float32(255))


def test_a_cifar_jpeg_file_decodes_to_the_same_pixels_as_the_training_loader(cifar_folder):
    from training.datasets import SPECS, read_image_file

    path = next((cifar_folder / "test" / "ship").glob("*.jpg"))
    array = prepare_image(path.read_bytes(), RGB, LIMITS)
    assert array.shape == (32, 32, 3)
    assert np.array_equal(array, read_image_file(path, SPECS["cifar10"]).astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_supported_format_decodes(garment, fmt):
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    array = prepare_image(png_bytes(garment, fmt, **params), GRAY, LIMITS)
    assert array.shape == (28, 28) and 0.0 <= array.min() and array.max() <= 1.0
    assert np.abs(array - garment / 255).mean() < 0.03


def test_sixteen_bit_images_are_scaled_not_clipped(garment):
    wide = garment.astype(np.uint16) * 257  # the same picture at 16 bits
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    assert np.allclose(prepare_image(buffer.getvalue(), GRAY, LIMITS), garment / 255, atol=1 / 255)


def test_palette_and_alpha_images_are_composited_over_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 0, 0, 255)  # an opaque red square on a transparent background
    array = prepare_image(png_bytes(rgba), RGB, LIMITS)
    assert np.allclose(array[0, 0], 1.0) and np.allclose(array[16, 16], [200 / 255, 0, 0])
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    palette.save(buffer, format="GIF")
    assert prepare_image(buffer.getvalue(), RGB, LIMITS).shape == (32, 32, 3)


def test_exif_orientation_is_honored():
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :10] = 255  # a bright stripe on the left of a wide image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=100)
    array = normalize_image(decode_image(buffer.getvalue(), LIMIT), InputSpec((28, 28), "grayscale", False))
    # Displayed upright the image is tall, and the stripe is at the top.
    assert array[:6, 14].mean() > 0.8 and array[-6:, 14].mean() < 0.2


def test_aspect_ratio_is_kept_by_padding_not_stretching():
    wide = np.zeros((10, 40), np.uint8)
    wide[1:-1, 1:-1] = 255  # a white 4:1 bar with a black edge: the padding takes the edge's color
    array = prepare_image(png_bytes(wide), InputSpec((28, 28), "grayscale", False), LIMITS)
    bar_rows = np.flatnonzero(array.mean(axis=1) > 0.3)
    bar_columns = np.flatnonzero(array.mean(axis=0) > 0.1)
    assert array.shape == (28, 28) and 4 <= len(bar_rows) <= 8  # about 28 * 10/40 = 7 rows tall, not 28
    assert len(bar_columns) >= 24


def test_a_dark_garment_on_a_light_photo_is_inverted_like_the_dataset(garment):
    photo = Image.fromarray(255 - garment).resize((280, 280), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    array = prepare_image(buffer.getvalue(), GRAY, LIMITS)
    assert np.abs(array - garment / 255).mean() < 0.05
    assert has_light_background(255 - garment) and not has_light_background(garment)


def test_garbage_truncated_and_empty_uploads_are_invalid_images(garment):
    with pytest.raises(InvalidImage, match="not an image"):
        decode_image(b"hello, world" * 10, LIMIT)
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", LIMIT)
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(png_bytes(garment)[:60], LIMIT)


def test_a_known_but_unsupported_format_is_415(garment):
    buffer = io.BytesIO()
    Image.fromarray(garment).save(buffer, format="ICO")
    with pytest.raises(UnsupportedMediaType, match="ICO images are not supported"):
        decode_image(buffer.getvalue(), LIMIT)


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = png_bytes(np.zeros((4000, 4000), np.uint8))  # 16 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="4000x4000"):
        decode_image(bomb, max_pixels=1_000_000)
