"""The direct PNG/JPEG path must give exactly Pillow's pixels, and must step aside for anything unusual."""

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImage
from service.fast_decode import decode_plain
from service.images import InputSpec, decode_image, normalize_image, prepare_image
from tests.conftest import png_bytes

GRAY = InputSpec((28, 28), "grayscale", invert_light_background=True)
RGB = InputSpec((32, 32, 3), "rgb", invert_light_background=False)
LIMIT = 40_000_000


def through_pillow(data: bytes, spec: InputSpec) -> np.ndarray:
    return normalize_image(decode_image(data, LIMIT), spec)


def test_every_fashion_test_png_takes_the_direct_path_with_pillows_pixels(fashion):
    for pixels in fashion.x_test[:3000]:
        data = png_bytes(pixels)
        assert np.array_equal(decode_plain(data, "L", LIMIT), pixels)
        assert np.array_equal(prepare_image(data, GRAY, LIMIT), through_pillow(data, GRAY))


def test_every_cifar_test_jpeg_takes_the_direct_path_with_pillows_pixels(cifar_folder):
    files = sorted((cifar_folder / "test").glob("*/*.jpg"))
    assert len(files) == 10_000
    for path in files:
        data = path.read_bytes()
        direct = decode_plain(data, "RGB", LIMIT)
        assert direct is not None, path
        assert np.array_equal(direct, np.asarray(Image.open(path).convert("RGB"))), path


def test_light_backgrounds_and_other_sizes_match_pillow_on_the_direct_path(fashion):
    light = 255 - fashion.x_test[1]  # dark garment on white, as photographed
    wide = np.pad(fashion.x_test[2], ((0, 0), (14, 14)))  # 28x56: padded back to 28x28
    rgb_small = np.stack([fashion.x_test[3][:20, :24]] * 3, axis=-1)  # 24x20 RGB for the RGB model
    for pixels, spec, mode in ((light, GRAY, "L"), (wide, GRAY, "L"), (rgb_small, RGB, "RGB")):
        for data in (png_bytes(pixels), png_bytes(pixels, "JPEG", quality=90)):
            assert decode_plain(data, mode, LIMIT) is not None
            assert np.array_equal(prepare_image(data, spec, LIMIT), through_pillow(data, spec))


def _exif_rotated_jpeg(pixels: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _cmyk_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_with_transparency(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize("make, spec, mode", [
    (lambda g: png_bytes(np.stack([g] * 3, axis=-1)), GRAY, "L"),  # RGB file for a gray model
    (lambda g: png_bytes(g), RGB, "RGB"),  # gray file for an RGB model
    (lambda g: png_bytes(g.astype(np.uint16) * 257), GRAY, "L"),  # 16-bit
    (lambda g: png_bytes(np.dstack([g, g, g, g])), RGB, "RGB"),  # alpha channel
    (_png_with_transparency, GRAY, "L"),  # tRNS chunk: transparent black
    (lambda g: _exif_rotated_jpeg(np.stack([g] * 3, axis=-1)), RGB, "RGB"),  # EXIF orientation
    (lambda g: _cmyk_jpeg(np.stack([g] * 3, axis=-1)), RGB, "RGB"),  # CMYK
    (lambda g: png_bytes(g, "GIF"), GRAY, "L"),  # any other format
])
def test_unusual_files_go_the_pillow_way_and_still_work(fashion, make, spec, mode):
    data = make(fashion.x_test[0])
    assert decode_plain(data, mode, LIMIT) is None
    assert prepare_image(data, spec, LIMIT).shape == spec.shape


def test_corrupt_and_oversized_files_get_pillows_answer(fashion):
    png, jpeg = png_bytes(fashion.x_test[0]), png_bytes(fashion.x_test[0], "JPEG")
    for broken in (png[:60], png[:40] + b"\0" * 30 + png[70:], jpeg[:200], jpeg[:300] + b"\xff" * 50):
        assert decode_plain(broken, "L", LIMIT) is None
        with pytest.raises(InvalidImage):
            prepare_image(broken, GRAY, LIMIT)
    assert decode_plain(png, "L", 28 * 28 - 1) is None  # over the pixel limit: Pillow words the refusal
