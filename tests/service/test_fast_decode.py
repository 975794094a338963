"""The direct PNG/JPEG path must give exactly Pillow's pixels, step aside for unusual PNGs, decode large JPEGs at a
reduced scale, and refuse damaged JPEGs that Pillow would decode anyway."""

import io

import numpy as np
import pytest
from PIL import Image

from service.inference import fast_decode
from service.errors import InvalidImage
from contract.metadata import InputSpec
from service.inference.images import DecodeLimits, decode_image, normalize_image, plan_decode, prepare_image
from service.settings import Settings
from tests.conftest import png_bytes

GRAY = InputSpec((28, 28), "grayscale", invert_light_background=True)
RGB = InputSpec((32, 32, 3), "rgb", invert_light_background=False)
LIMIT = Settings().max_image_pixels
LIMITS = DecodeLimits.from_settings(Settings())


def through_pillow(data: bytes, spec: InputSpec) -> np.ndarray:
    return normalize_image(decode_image(data, LIMIT), spec)


def test_every_fashion_test_png_takes_the_direct_path_with_pillows_pixels(fashion):
    for pixels in fashion.x_test[:3000]:
        data = png_bytes(pixels)
        plan = plan_decode(data, GRAY, LIMITS)
        assert plan.png is not None
        assert np.array_equal(fast_decode.decode_png(data, plan.png), pixels)
        assert np.array_equal(prepare_image(data, GRAY, LIMITS), through_pillow(data, GRAY))


def test_every_cifar_test_jpeg_takes_the_direct_path_with_pillows_pixels(cifar_folder):
    files = sorted((cifar_folder / "test").glob("*/*.jpg"))
    assert len(files) == 10_000
    for path in files:
        data = path.read_bytes()
        plan = plan_decode(data, RGB, LIMITS)
        assert plan.jpeg is not None and plan.decoded_pixels == 32 * 32, path
        direct = fast_decode.decode_jpeg(data, plan.jpeg, "RGB", 96, 96)  # too small to be scaled down
        assert np.array_equal(direct, np.asarray(Image.open(path).convert("RGB"))), path


def test_light_backgrounds_and_other_sizes_match_pillow_on_the_direct_path(fashion):
    light = 255 - fashion.x_test[1]  # dark garment on white, as photographed
    wide = np.pad(fashion.x_test[2], ((0, 0), (14, 14)))  # 28x56: padded back to 28x28
    rgb_small = np.stack([fashion.x_test[3][:20, :24]] * 3, axis=-1)  # 24x20 RGB for the RGB model
    color_for_gray = np.stack([fashion.x_test[4]] * 3, axis=-1)  # an RGB JPEG for the gray model
    for pixels, spec in ((light, GRAY), (wide, GRAY), (rgb_small, RGB), (color_for_gray, GRAY)):
        for data in (png_bytes(pixels), png_bytes(pixels, "JPEG", quality=90)):
            plan = plan_decode(data, spec, LIMITS)
            assert plan.png is not None or plan.jpeg is not None or pixels is color_for_gray
            assert np.array_equal(prepare_image(data, spec, LIMITS), through_pillow(data, spec))


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


@pytest.mark.parametrize("make, spec", [
    (lambda g: png_bytes(np.stack([g] * 3, axis=-1)), GRAY),  # RGB file for a gray model
    (lambda g: png_bytes(g), RGB),  # gray file for an RGB model
    (lambda g: png_bytes(g.astype(np.uint16) * 257), GRAY),  # 16-bit
    (lambda g: png_bytes(np.dstack([g, g, g, g])), RGB),  # alpha channel
    (_png_with_transparency, GRAY),  # tRNS chunk: transparent black
    (lambda g: png_bytes(g, "GIF"), GRAY),  # any other format
])
def test_unusual_pngs_and_other_formats_go_the_pillow_way_and_still_work(fashion, make, spec):
    data = make(fashion.x_test[0])
    assert plan_decode(data, spec, LIMITS).png is None
    assert np.array_equal(prepare_image(data, spec, LIMITS), through_pillow(data, spec))


@pytest.mark.parametrize("make", [_exif_rotated_jpeg, _cmyk_jpeg])
def test_rotated_and_cmyk_jpegs_give_pillows_pixels(fashion, make):
    data = make(np.stack([fashion.x_test[0][:, 4:]] * 3, axis=-1))  # 24 wide, 28 tall: rotation shows
    assert plan_decode(data, RGB, LIMITS).jpeg is not None
    assert np.array_equal(prepare_image(data, RGB, LIMITS), through_pillow(data, RGB))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_looks_the_same(fashion):
    photo = Image.fromarray(255 - fashion.x_test[5]).resize((2800, 2800), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    plan = plan_decode(data, GRAY, LIMITS)
    assert plan.decoded_pixels == 350 * 350  # libjpeg-turbo's 1/8 scale: still 3 x 28 and more
    full_size = through_pillow(data, GRAY)
    assert np.abs(prepare_image(data, GRAY, LIMITS) - full_size).mean() < 0.01


def test_corrupt_and_truncated_files_are_invalid_images(fashion):
    png, jpeg = png_bytes(fashion.x_test[0]), png_bytes(fashion.x_test[0], "JPEG")
    cut_scan = jpeg[:len(jpeg) * 2 // 3] + b"\xff\xd9"  # an end marker, but the scan data stops short
    Image.open(io.BytesIO(cut_scan)).load()  # Pillow decodes it without a word
    for broken in (png[:60], png[:40] + b"\0" * 30 + png[70:], jpeg[:200], jpeg[:300] + b"\xff" * 50, cut_scan):
        with pytest.raises(InvalidImage):
            prepare_image(broken, GRAY, LIMITS)


def test_the_pixel_limit_is_checked_on_the_header_before_decoding(fashion):
    from service.errors import ImageTooLarge
    from service.inference.images import DecodeLimits

    with pytest.raises(ImageTooLarge, match="MAX_IMAGE_PIXELS"):
        plan_decode(png_bytes(fashion.x_test[0]), GRAY, DecodeLimits(28 * 28 - 1, 1 << 30, 1 << 30))
