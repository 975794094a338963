"""Direct decoding of plain PNG and JPEG uploads, the common case, without Pillow's per-file overhead.

For a 28x28 PNG or a 32x32 JPEG, Pillow spends most of its time parsing chunks and markers in Python;
libspng (``pyspng``) and libjpeg-turbo (``simplejpeg``) decode the same file to a NumPy array three to seven
times faster (``make bench`` prints both).
This path only takes files whose pixels Pillow would give unchanged after the color-mode conversion:
8-bit PNGs and JPEGs already in the model's mode, with no transparency and no metadata that could rotate
them. Everything else, and anything these decoders reject, returns ``None`` and goes the general Pillow
way, which also words every error. Both ways give identical pixels (tests/service/test_fast_decode.py).
"""

from __future__ import annotations

import re
import struct

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
# libjpeg-turbo colorspace names per Pillow mode. An APP1 segment (EXIF or XMP) may carry an orientation.
JPEG_COLORSPACES = {"L": "Gray", "RGB": "YCbCr"}
JPEG_APP1 = b"\xff\xe1"


def decode_plain(data: bytes, mode: str, max_pixels: int) -> np.ndarray | None:
    """uint8 pixels (HxW for "L", HxWx3 for "RGB") of a plain PNG or JPEG in ``mode``, else None."""
    try:
        if data.startswith(PNG_SIGNATURE):
            return _decode_png(data, mode, max_pixels)
        if data.startswith(JPEG_START):
            return _decode_jpeg(data, mode, max_pixels)
    except (RuntimeError, ValueError, struct.error):
        return None  # corrupt or unusual: the Pillow path decides, and explains
    return None


def _decode_png(data: bytes, mode: str, max_pixels: int) -> np.ndarray | None:
    if data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if (width * height > max_pixels or bit_depth != 8 or color_type != PNG_COLOR_TYPES.get(mode)
            or PNG_CHUNKS_NEEDING_PILLOW.search(data)):
        return None
    pixels = pyspng.load(data)
    return pixels if pixels.dtype == np.uint8 and pixels.shape[:2] == (height, width) else None


def _decode_jpeg(data: bytes, mode: str, max_pixels: int) -> np.ndarray | None:
    if JPEG_APP1 in data:
        return None
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if width * height > max_pixels or colorspace != JPEG_COLORSPACES.get(mode):
        return None
    pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if mode == "L" else "RGB", strict=True)
    return pixels[:, :, 0] if mode == "L" else pixels
