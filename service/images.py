"""Uploaded bytes -> a validated float32 array in the model's input contract (Pillow and NumPy, no Flask).

The steps mirror the ``preprocessing`` block of a model's metadata.json: decode the first frame, apply the
EXIF orientation, composite transparency over white, convert to gray or RGB, invert light backgrounds for
models trained on dark ones, fit inside the input size keeping the aspect ratio (padding with the border's
median color), and scale to [0, 1]. An image already in the model's size and mode passes through untouched,
so dataset images give exactly the pixels the model was evaluated on. Plain PNG and JPEG files already in the
model's mode skip Pillow's decoder (``fast_decode``) and give the same pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.fast_decode import decode_plain

SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
WHITE = (255, 255, 255, 255)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class InputSpec:
    """What a model takes, from its metadata: size, color mode, and whether to invert light backgrounds."""

    shape: tuple[int, ...]
    color_mode: str  # "grayscale" or "rgb"
    invert_light_background: bool

    @property
    def size(self) -> tuple[int, int]:
        return (self.shape[1], self.shape[0])

    @property
    def pillow_mode(self) -> str:
        return "L" if self.color_mode == "grayscale" else "RGB"

    @classmethod
    def from_metadata(cls, metadata: dict) -> InputSpec:
        return cls(
            shape=tuple(metadata["input"]["shape"]),
            color_mode=metadata["input"]["color_mode"],
            invert_light_background=bool(metadata["preprocessing"].get("invert_light_background", False)),
        )


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame of a supported image; raise a client error for anything else."""
    if not data:
        raise InvalidImage("the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            # The header gives the size: refuse huge images before decoding any pixels.
            if image.width * image.height > max_pixels:
                raise ImageTooLarge(f"the image has {image.width}x{image.height} pixels, more than the limit of "
                                    f"{max_pixels} (MAX_IMAGE_PIXELS)")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError:
        detected = _detect_format(data)
        if detected:
            raise UnsupportedMediaType(
                f"{detected} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}") from None
        raise InvalidImage("the upload is not an image Pillow can read "
                           f"(supported: {', '.join(SUPPORTED_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
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
    """Wide-range modes ("I;16", "I", "F") scaled to 8 bits, instead of Pillow's clipping at 255."""
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


@dataclass(frozen=True)
class UploadFacts:
    """What an upload was before normalization: the input statistics monitoring counts."""

    format: str      # PNG, JPEG, GIF, BMP, WEBP or TIFF
    width: int
    height: int
    color: bool      # an RGB (or palette, CMYK, ...) upload, rather than gray
    inverted: bool   # its light background was inverted (Fashion-MNIST)


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def prepare_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode and normalize one upload: plain PNG/JPEG files directly, everything else through Pillow."""
    return inspect_image(data, spec, max_pixels)[0]


def inspect_image(data: bytes, spec: InputSpec, max_pixels: int) -> tuple[np.ndarray, UploadFacts]:
    """``prepare_image``, also returning what the upload was."""
    pixels = decode_plain(data, spec.pillow_mode, max_pixels)
    if pixels is None:
        image = decode_image(data, max_pixels)
        original_format, original_mode, (width, height) = image.format, image.mode, image.size
        array, inverted = _normalize(np.asarray(oriented_in_mode(image, spec)), spec)
        return array, UploadFacts(original_format or "unknown", width, height, original_mode not in GRAY_MODES,
                                  inverted)
    # decode_plain only takes files already in the model's color mode.
    array, inverted = _normalize(pixels, spec)
    file_format = "PNG" if data.startswith(b"\x89PNG") else "JPEG"
    return array, UploadFacts(file_format, pixels.shape[1], pixels.shape[0], pixels.ndim == 3, inverted)


def encode_model_input(pixels: np.ndarray) -> bytes:
    """One normalized input as a PNG of exactly the 8-bit values the model saw (each pixel x 255): what the page
    and ``/predict?include=input`` show, since inversion, fitting and padding explain many answers."""
    buffer = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
