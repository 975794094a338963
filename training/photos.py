"""Dataset images turned into the kind of "photos" users send: larger, off-center, rescaled, noisy JPEGs on
light or textured backgrounds. A shift the served model has not seen, for measuring the feedback loop."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PHOTO_SIZE = 96


def _background(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """A light background: flat, a gradient, or a coarse texture."""
    level = rng.uniform(170, 245)
    kind = rng.integers(3)
    if kind == 0:
        plane = np.full((size, size), level)
    elif kind == 1:
        ramp = np.linspace(-1, 1, size)
        angle = rng.uniform(0, np.pi)
        plane = level + rng.uniform(10, 35) * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    else:
        coarse = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
        texture = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BILINEAR))
        plane = level + rng.uniform(8, 20) * texture
    tint = rng.uniform(-12, 12, channels) if channels == 3 else np.zeros(1)
    return np.clip(plane[..., None] + tint, 0, 255)


def make_photo(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """One dataset image (light object on black, uint8, HW or HWC) as a 96x96 JPEG "photo"."""
    channels = 3 if image.ndim == 3 else 1
    side = int(rng.integers(40, 76))
    scaled = Image.fromarray(image).resize((side, side), Image.BILINEAR)
    obj = np.asarray(scaled, np.float64).reshape(side, side, channels)
    canvas = _background(rng, PHOTO_SIZE, channels)
    top, left = (int(v) for v in rng.integers(0, PHOTO_SIZE - side + 1, 2))
    region = canvas[top:top + side, left:left + side]
    if channels == 1:
        # The object as a dark print on the light background, as a garment photographed on a table.
        alpha = obj / 255.0
        ink = rng.uniform(0, 90)
        region[:] = region * (1 - alpha) + ink * alpha
    else:
        mask = (obj.max(axis=2, keepdims=True) > 8).astype(np.float64)  # CIFAR objects fill the frame
        region[:] = region * (1 - mask) + obj * mask
    canvas = canvas + rng.normal(0, rng.uniform(3, 12), canvas.shape)
    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=int(rng.integers(60, 92)))
    return buffer.getvalue()


def make_photos(images: np.ndarray, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [make_photo(image, rng) for image in images]
