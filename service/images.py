"""Uploaded bytes -> a validated float32 array in the model's input contract (Pillow and NumPy, no Flask).

The steps mirror the ``preprocessing`` block of a model's metadata.json: decode the first frame, apply the
EXIF orientation, composite transparency over white, convert to gray or RGB, invert light backgrounds for
models trained on dark ones, fit inside the input size keeping the aspect ratio (padding with the border's
median color), and scale to [0, 1]. An image already in the model's size and mode passes through untouched,
so dataset images give exactly the pixels the model was evaluated on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

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
    # Counting over the four edges is the median test without sorting or copying the border.
    edges = (gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1])
    light = sum(int(np.count_nonzero(edge > 127)) for edge in edges)
    return 2 * light > sum(edge.size for edge in edges)


def normalize_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image -> float32 array of ``spec.shape`` with values in [0, 1]."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    image = to_color_mode(image, spec.pillow_mode)
    if spec.invert_light_background and has_light_background(np.asarray(image.convert("L"))):
        image = ImageOps.invert(image)
    if image.size != spec.size:
        pad = np.median(border_pixels(np.asarray(image)), axis=0)
        color = int(pad) if pad.ndim == 0 else tuple(int(c) for c in pad)
        image = ImageOps.pad(image, spec.size, method=Image.Resampling.LANCZOS, color=color)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def prepare_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode and normalize one upload."""
    return normalize_image(decode_image(data, max_pixels), spec)
