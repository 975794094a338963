"""Uploaded bytes -> a validated float32 array in the model's input contract (Pillow and NumPy, no Flask).

Two steps, so that no request's cost is unbounded:

1. ``plan_decode`` reads only the file's header (format, size, mode, bit depth) and says what decoding it will
   cost: the pixels the decoder will produce and the memory it will take at its peak. Whatever is over the limits
   (``DecodeLimits``) is refused here, before a pixel is decoded; ``plan_batch`` also bounds a request's images
   together.
2. ``decode_planned`` does the work, in bounded memory: JPEGs are decoded at a reduced scale by libjpeg-turbo;
   other large images are shrunk by an integer factor right after decoding (``Image.reduce``), before any
   conversion, so 16-bit, float, palette and transparent files never get a second full-size copy.

Then the steps of the ``preprocessing`` block of a model's metadata.json: the first frame, the EXIF orientation,
transparency composited over white, gray or RGB, light backgrounds inverted for models trained on dark ones,
fitted inside the input size keeping the aspect ratio (padded with the border's median color), scaled to [0, 1].
An image already in the model's size and mode passes through untouched, so dataset images give exactly the pixels
the model was evaluated on.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.metadata import InputSpec
from service.inference import fast_decode
from service.settings import Settings
from service.errors import ImageTooLarge, InvalidImage, RequestTooLarge, UnsupportedMediaType

SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# What Pillow raises for a damaged file, while opening or decoding it.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError)
WHITE = (255, 255, 255, 255)
EXIF_ORIENTATION = 0x0112
# A large image is first shrunk to no less than this many times the size it will be resampled to, then resampled
# with Lanczos: Pillow's own "reducing gap", at which the two-step result is indistinguishable from a full-size one.
REDUCING_GAP = 3

# Peak memory of a decode, in bytes per decoded pixel, as measured by ``python bench/decode_costs.py``: the
# decoder's image in Pillow's layout (1 byte for "1", "L" and "P", 2 for 16-bit gray, 4 for everything else),
# plus the full-size copy that a mode needs before it can be shrunk (palette -> RGB, 16-bit -> 32-bit,
# transparency -> premultiplied). WebP's decoder keeps RGBA buffers of its own beside Pillow's image (18.2
# measured); a JPEG's pixels are few, since libjpeg-turbo decodes it at a reduced scale.
MODE_BYTES_PER_PIXEL = {"1": 2, "L": 1, "P": 5, "I;16": 6, "I;16B": 6, "I;16L": 6, "I;16N": 6,
                        "LA": 8, "PA": 8, "RGBA": 8, "La": 4, "RGBa": 4}
OTHER_MODES_BYTES_PER_PIXEL = 4
TRANSPARENT_BYTES_PER_PIXEL = 9  # a palette or gray file with a transparent color: itself, RGBA, premultiplied
FORMAT_BYTES_PER_PIXEL = {"WEBP": 19}
JPEG_BYTES_PER_PIXEL = 8  # libjpeg-turbo's array, Pillow's copy of it for resampling, and the conversion's
# Decoding a JPEG costs about 10 ns per byte of compressed data, however small the scale it is decoded at.
JPEG_WORK_PIXELS_PER_BYTE = 1


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding may cost; refused above, before any pixel is decoded (docs/operations.md#limits)."""

    max_image_pixels: int  # width x height one image may declare (MAX_IMAGE_PIXELS)
    max_decode_bytes: int  # peak memory of decoding one image (MAX_DECODE_BYTES)
    max_request_pixels: int  # pixels decoded for all images of a request (MAX_REQUEST_PIXELS)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(settings.max_image_pixels, settings.max_decode_bytes, settings.max_request_pixels)


@dataclass(frozen=True)
class UploadFacts:
    """What an upload was before normalization: the input statistics monitoring counts."""

    format: str      # PNG, JPEG, GIF, BMP, WEBP or TIFF
    width: int
    height: int
    color: bool      # an RGB (or palette, CMYK, ...) upload, rather than gray
    inverted: bool   # its light background was inverted (Fashion-MNIST)


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class DecodePlan(NamedTuple):
    """One upload as its header describes it, and what decoding it will cost."""

    data: bytes
    format: str
    width: int  # as declared
    height: int
    decoded_pixels: int  # what the decoder will produce (a JPEG's reduced scale)
    decode_bytes: int  # peak memory of the decode
    work: int  # CPU the decode takes, in pixels: a JPEG's compressed bytes count too
    png: fast_decode.PngHeader | None = None  # set when libspng decodes it
    jpeg: fast_decode.JpegHeader | None = None  # set for every JPEG
    opened: Image.Image | None = None  # Pillow's lazily opened image, for everything else

    @property
    def color(self) -> bool:
        if self.png is not None:
            return self.png.color_type != 0
        if self.jpeg is not None:
            return self.jpeg.colorspace != "Gray"
        return self.opened.mode not in GRAY_MODES


def fitted_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """The size an image is resampled to: inside the input size, keeping its aspect ratio (ImageOps.pad's)."""
    target_width, target_height = spec.size
    scale = min(target_width / width, target_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def plan_decode(data: bytes, spec: InputSpec, limits: DecodeLimits) -> DecodePlan:
    """Read the header and price the decode; refuse what is not a supported image or costs too much."""
    if not data:
        raise InvalidImage("the upload is empty")
    png = fast_decode.png_header(data)
    if png is not None and fast_decode.direct_png(data, png, spec.pillow_mode):
        channels = 1 if png.color_type == 0 else 3
        pixels = png.width * png.height
        return _checked(DecodePlan(data, "PNG", png.width, png.height, pixels, pixels * channels, pixels, png=png),
                        limits)
    try:
        jpeg = fast_decode.jpeg_header(data)
    except ValueError as exc:
        raise InvalidImage(f"the JPEG is corrupt or of a kind that cannot be read: {exc}") from None
    if jpeg is not None:
        return _checked(_jpeg_plan(data, jpeg, spec), limits)
    opened = _open(data)
    pixels = opened.width * opened.height
    per_pixel = FORMAT_BYTES_PER_PIXEL.get(opened.format) or MODE_BYTES_PER_PIXEL.get(
        opened.mode, OTHER_MODES_BYTES_PER_PIXEL)
    if "transparency" in opened.info:
        per_pixel = max(per_pixel, TRANSPARENT_BYTES_PER_PIXEL)
    return _checked(DecodePlan(data, opened.format or "unknown", opened.width, opened.height, pixels,
                               pixels * per_pixel, pixels, opened=opened), limits)


def _jpeg_plan(data: bytes, jpeg: fast_decode.JpegHeader, spec: InputSpec) -> DecodePlan:
    fitted = fitted_size(jpeg.width, jpeg.height, spec)
    scale = fast_decode.jpeg_scale(jpeg.width, jpeg.height, *(REDUCING_GAP * side for side in fitted))
    pixels = math.ceil(jpeg.width * scale) * math.ceil(jpeg.height * scale)
    # CMYK and YCCK files are decoded twice: checked by libjpeg-turbo, converted by Pillow.
    decodes = 1 if jpeg.colorspace in fast_decode.JPEG_DIRECT_COLORSPACES else 2
    return DecodePlan(data, "JPEG", jpeg.width, jpeg.height, pixels, pixels * JPEG_BYTES_PER_PIXEL,
                      decodes * (pixels + len(data) * JPEG_WORK_PIXELS_PER_BYTE), jpeg=jpeg)


def _open(data: bytes) -> Image.Image:
    """Pillow's lazily opened image: header parsed, no pixel decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError:
        detected = _detect_format(data)
        if detected:
            raise UnsupportedMediaType(
                f"{detected} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}") from None
        raise InvalidImage("the upload is not an image Pillow can read "
                           f"(supported: {', '.join(SUPPORTED_FORMATS)})") from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the image is corrupt or truncated: {exc}") from exc


def _checked(plan: DecodePlan, limits: DecodeLimits) -> DecodePlan:
    if plan.width * plan.height > limits.max_image_pixels:
        raise ImageTooLarge(f"the image has {plan.width}x{plan.height} pixels, more than the limit of "
                            f"{limits.max_image_pixels} (MAX_IMAGE_PIXELS)")
    if plan.decode_bytes > limits.max_decode_bytes:
        raise ImageTooLarge(f"decoding this {plan.width}x{plan.height} {plan.format} would take about "
                            f"{plan.decode_bytes >> 20} MiB, more than the limit of "
                            f"{limits.max_decode_bytes >> 20} MiB (MAX_DECODE_BYTES); send it smaller or as a JPEG")
    if plan.decoded_pixels > limits.max_request_pixels:
        raise ImageTooLarge(f"decoding this {plan.width}x{plan.height} {plan.format} means {plan.decoded_pixels} "
                            f"pixels, more than a request's limit of {limits.max_request_pixels} "
                            "(MAX_REQUEST_PIXELS); send it smaller or as a JPEG")
    return plan


def plan_batch(images: list[bytes], spec: InputSpec, limits: DecodeLimits) -> list[DecodePlan]:
    """Every image's plan, refusing the request when all of them together would decode too many pixels."""
    plans = [plan_decode(data, spec, limits) for data in images]
    total = sum(plan.decoded_pixels for plan in plans)
    if total > limits.max_request_pixels:
        raise RequestTooLarge(f"decoding these {len(plans)} images means {total} pixels, more than a request's "
                              f"limit of {limits.max_request_pixels} (MAX_REQUEST_PIXELS); send fewer or "
                              "smaller images per request")
    return plans


def decode_planned(plan: DecodePlan, spec: InputSpec) -> tuple[np.ndarray, UploadFacts]:
    """The normalized float32 array of a planned upload, and what the upload was."""
    array, inverted = _normalize(decode_pixels(plan, spec), spec)
    return array, UploadFacts(plan.format, plan.width, plan.height, plan.color, inverted)


def decode_pixels(plan: DecodePlan, spec: InputSpec) -> np.ndarray:
    """The uint8 pixels of a planned upload in the model's color mode (HxW or HxWx3), oriented, before fitting."""
    if plan.png is not None:
        pixels = fast_decode.decode_png(plan.data, plan.png)
        if pixels is None:  # libspng refused it: Pillow decides, and words the error
            return decode_pixels(_repriced(plan), spec)
        return pixels
    if plan.jpeg is not None:
        return _decode_jpeg(plan, spec)
    return np.asarray(_decode_with_pillow(plan.opened, spec))


def _repriced(plan: DecodePlan) -> DecodePlan:
    opened = _open(plan.data)
    return DecodePlan(plan.data, plan.format, plan.width, plan.height, plan.decoded_pixels, plan.decode_bytes,
                      plan.work, opened=opened)


def _decode_jpeg(plan: DecodePlan, spec: InputSpec) -> np.ndarray:
    fitted = fitted_size(plan.width, plan.height, spec)
    try:
        pixels = fast_decode.decode_jpeg(plan.data, plan.jpeg, spec.pillow_mode, *(REDUCING_GAP * s for s in fitted))
    except ValueError as exc:
        raise InvalidImage(f"the image is corrupt or truncated: {exc}") from None
    if plan.jpeg.colorspace not in fast_decode.JPEG_DIRECT_COLORSPACES:
        # CMYK or YCCK: validated by libjpeg-turbo above, converted by Pillow (which knows Adobe's inverted CMYK).
        return np.asarray(_decode_with_pillow(_open(plan.data), spec,
                                              draft=pixels.shape[1::-1]))
    if pixels.ndim == 3 and spec.pillow_mode == "L":
        pixels = np.asarray(Image.fromarray(pixels).convert("L"))
    if plan.jpeg.oriented:
        pixels = _oriented_pixels(pixels, _orientation(plan.data))
    return pixels


def _orientation(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _exif_orientation(image)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block only means no rotation
        return 1


# EXIF orientation -> the transposition that displays the image upright (as ImageOps.exif_transpose does).
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _oriented_pixels(pixels: np.ndarray, orientation: int) -> np.ndarray:
    method = ORIENTATIONS.get(orientation)
    return pixels if method is None else np.asarray(Image.fromarray(pixels).transpose(method))


def _decode_with_pillow(image: Image.Image, spec: InputSpec, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode the first frame, shrink it early if it is large, orient it and convert it to the model's mode."""
    try:
        if draft is not None:
            image.draft(image.mode, draft)
        image.load()
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the image is corrupt or truncated: {exc}") from exc
    orientation = _exif_orientation(image)
    image = shrink(image, spec)
    if orientation in ORIENTATIONS:
        image = image.transpose(ORIENTATIONS[orientation])
    return to_color_mode(image, spec.pillow_mode)


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block only means no rotation
        return 1


def shrink(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Reduce a decoded image by an integer factor (box average) while it stays ``REDUCING_GAP`` times its fitted
    size, in its own mode where Pillow can, so that every later conversion works on the small copy."""
    fitted = fitted_size(image.width, image.height, spec)
    factor = min(image.width // (REDUCING_GAP * fitted[0]), image.height // (REDUCING_GAP * fitted[1]))
    if factor < 2:
        return image
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    elif image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA"):
        # Averaged premultiplied, so the color of transparent pixels does not bleed into the visible ones.
        premultiplied = "RGBa" if image.mode == "RGBA" else "La"
        return image.convert(premultiplied).reduce(factor).convert(image.mode)
    return image.reduce(factor)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame of a supported image with Pillow, at full size (for tests and tools that want
    Pillow's own result); the serving path is ``plan_decode`` + ``decode_planned``."""
    if not data:
        raise InvalidImage("the upload is empty")
    image = _open(data)
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(f"the image has {image.width}x{image.height} pixels, more than the limit of "
                            f"{max_pixels} (MAX_IMAGE_PIXELS)")
    try:
        image.load()
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the image is corrupt or truncated: {exc}") from exc
    return image


def _detect_format(data: bytes) -> str | None:
    """The format of an image Pillow knows but the service does not accept (header only, nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except Exception:  # noqa: BLE001 - anything unreadable simply is not an image
        return None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Wide-range modes ("I;16", "I", "F") scaled to 8 bits, instead of Pillow's clipping at 255. Only ever called
    on an image already shrunk (``shrink``), so the float64 copy is small."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0
    scaled = np.clip(values / top, 0.0, 1.0) * 255.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def to_color_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB", compositing any transparency over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    return image if image.mode == mode else image.convert(mode)


def border_pixels(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels, shape (n,) or (n, channels)."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def has_light_background(gray: np.ndarray) -> bool:
    """True when most of the border is light: a dark object photographed on a light background."""
    border = border_pixels(gray)
    return 2 * int(np.count_nonzero(border > 127)) > border.size


def oriented_in_mode(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Apply the EXIF orientation, then convert to the model's color mode."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return to_color_mode(image, spec.pillow_mode)


def normalize_pixels(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels in the model's color mode -> float32 array of ``spec.shape`` with values in [0, 1]."""
    return _normalize(pixels, spec)[0]


def _normalize(pixels: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, bool]:
    """``normalize_pixels``, also saying whether the image was inverted."""
    inverted = False
    if spec.invert_light_background:
        gray = pixels if pixels.ndim == 2 else np.asarray(Image.fromarray(pixels).convert("L"))
        if has_light_background(gray):
            pixels = 255 - pixels
            inverted = True
    if pixels.shape[:2] != spec.shape[:2]:
        pad = np.median(border_pixels(pixels), axis=0)
        color = int(pad) if pad.ndim == 0 else tuple(int(c) for c in pad)
        image = ImageOps.pad(Image.fromarray(pixels), spec.size, method=Image.Resampling.LANCZOS, color=color)
        pixels = np.asarray(image)
    return pixels.astype(np.float32) / np.float32(255.0), inverted


def normalize_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image -> float32 array of ``spec.shape`` with values in [0, 1]."""
    return normalize_pixels(np.asarray(oriented_in_mode(image, spec)), spec)


def inspect_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> tuple[np.ndarray, UploadFacts]:
    """Plan and decode one upload: its normalized array and what it was."""
    return decode_planned(plan_decode(data, spec, limits), spec)


def prepare_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> np.ndarray:
    """Plan, decode and normalize one upload."""
    return inspect_image(data, spec, limits)[0]


def encode_model_input(pixels: np.ndarray) -> bytes:
    """One normalized input as a PNG of exactly the 8-bit values the model saw (each pixel x 255): what the page
    and ``/predict?include=input`` show, since inversion, fitting and padding explain many answers."""
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def input_body(pixels: np.ndarray) -> dict:
    """The image as the model saw it, as the JSON answers show it: a base64 PNG and its size."""
    height, width = pixels.shape[:2]
    return {"width": width, "height": height, "mode": "L" if pixels.ndim == 2 else "RGB",
            "png_base64": base64.b64encode(encode_model_input(pixels)).decode()}
