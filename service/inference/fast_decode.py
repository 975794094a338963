"""Direct decoding of PNG and JPEG uploads, the common case, without Pillow's per-file overhead.

For a 28x28 PNG or a 32x32 JPEG, Pillow spends most of its time parsing chunks and markers in Python;
libspng (``pyspng``) and libjpeg-turbo (``simplejpeg``) decode the same file to a NumPy array several times
faster (docs/performance.md has the figures ``make bench`` prints).

- PNG: only small files whose pixels Pillow would give unchanged after the color-mode conversion: 8 bits,
  already in the model's mode, no transparency and no metadata that could rotate them. Everything else
  returns ``None`` and goes the general Pillow way, which also words every error.
- JPEG: every file. libjpeg-turbo decodes at a reduced scale when the image is much larger than the model's
  input (its DCT scaling: a 24-megapixel photo costs the decoder a 64th of its pixels), and in strict mode, so a
  file whose scan data is cut short is refused even when its end marker is there. Both ways give Pillow's
  pixels for images decoded at full scale (tests/service/test_fast_decode.py).
"""

from __future__ import annotations

import math
import re
import struct
from typing import NamedTuple

import numpy as np

import pyspng
import simplejpeg

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"
# PNG color types per Pillow mode, and chunks after which Pillow's pixels would differ from the raw samples:
# transparency (composited over white), EXIF (orientation) and animation (first frame handling).
PNG_COLOR_TYPES = {"L": 0, "RGB": 2}
# A byte search, not a chunk walk: a false match in compressed data only means the slower path.
PNG_CHUNKS_NEEDING_PILLOW = re.compile(rb"tRNS|eXIf|acTL|zTXt|tEXt|iTXt")
# Larger PNGs go to Pillow, which can shrink them early (service.inference.images) before converting their mode.
DIRECT_PNG_MAX_PIXELS = 1 << 20
# libjpeg-turbo's colorspaces that it converts to RGB or gray itself; CMYK and YCCK need Pillow's conversion.
JPEG_DIRECT_COLORSPACES = ("Gray", "YCbCr", "RGB")
JPEG_APP1 = b"\xff\xe1"
# libjpeg-turbo scales by n/8 while decoding.
JPEG_SCALES = tuple(n / 8 for n in range(1, 9))


class PngHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    color_type: int


def png_header(data: bytes) -> PngHeader | None:
    """The IHDR fields of a PNG, or None when the file does not start like one."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    return PngHeader(*struct.unpack(">IIBB", data[16:26]))


def direct_png(data: bytes, header: PngHeader, mode: str) -> bool:
    """Whether this PNG can skip Pillow: small, 8 bits, in ``mode``, nothing Pillow would act on."""
    return (header.width * header.height <= DIRECT_PNG_MAX_PIXELS and header.bit_depth == 8
            and header.color_type == PNG_COLOR_TYPES.get(mode) and not PNG_CHUNKS_NEEDING_PILLOW.search(data))


def decode_png(data: bytes, header: PngHeader) -> np.ndarray | None:
    """uint8 pixels of a PNG that ``direct_png`` accepted; None when libspng fails (Pillow then explains)."""
    try:
        pixels = pyspng.load(data)
    except (RuntimeError, ValueError):
        return None
    return pixels if pixels.dtype == np.uint8 and pixels.shape[:2] == (header.height, header.width) else None


class JpegHeader(NamedTuple):
    width: int
    height: int
    colorspace: str  # libjpeg-turbo's: Gray, YCbCr, RGB, CMYK or YCCK
    oriented: bool  # it has an APP1 segment (EXIF), which may say how to rotate it


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The size and colorspace of a JPEG, read by libjpeg-turbo; None when the file does not start like one.
    Raises ValueError for a JPEG whose header libjpeg-turbo cannot read."""
    if not data.startswith(JPEG_START):
        return None
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    return JpegHeader(width, height, colorspace, JPEG_APP1 in data)


def jpeg_scale(width: int, height: int, min_width: int, min_height: int) -> float:
    """The smallest of libjpeg-turbo's scales that keeps the image at least ``min_width`` x ``min_height``."""
    return next((scale for scale in JPEG_SCALES
                 if math.ceil(width * scale) >= min_width and math.ceil(height * scale) >= min_height), 1.0)


def decode_jpeg(data: bytes, header: JpegHeader, mode: str, min_width: int, min_height: int) -> np.ndarray:
    """uint8 pixels, HxW for "L" and HxWx3 for "RGB" (CMYK and YCCK files: HxWx4, CMYK), decoded at the smallest
    scale that keeps ``min_width`` x ``min_height``. Strict: raises ValueError for a damaged file.

    A color file for a gray model is decoded in color: Pillow's RGB -> L conversion, applied afterwards, gives
    the same pixels as Pillow alone; libjpeg-turbo's own luma would differ by one here and there.
    """
    if header.colorspace not in JPEG_DIRECT_COLORSPACES:
        colorspace = "CMYK"
    else:
        colorspace = "GRAY" if mode == "L" and header.colorspace == "Gray" else "RGB"
    pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, min_width=min_width, min_height=min_height,
                                    strict=True)
    return pixels[:, :, 0] if colorspace == "GRAY" else pixels
