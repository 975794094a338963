"""Prediction ids: the SHA-256 of a normalized input's float32 pixels.

Every protocol's answer carries it, feedback names a prediction by it, and the feedback store files an image
under it: equal pixels, equal id, whichever protocol or file format brought them.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

ID_PATTERN = re.compile(r"[0-9a-f]{64}")


def input_id(pixels: np.ndarray) -> str:
    """The content hash of one normalized input (float32 in [0, 1])."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()
