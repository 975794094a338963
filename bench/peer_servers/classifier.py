"""What every peer server runs: the same int8 ONNX model on ONNX Runtime, one thread, behind a plain decode.

Shared by the peer servers of ``bench/peers.py``; each imports it from its own virtual environment, so it uses
only ONNX Runtime, Pillow and NumPy. The decode is the plain one a user would write for dataset-sized images
(no orientation, inversion or fitting): less work than the service does for the same PNG.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime
from PIL import Image

MODEL_PATH = os.environ["PEER_MODEL"]  # the .onnx file
COLOR_MODE = os.environ.get("PEER_COLOR_MODE", "L")  # Pillow mode of the model's input


def load_session() -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(MODEL_PATH, options, providers=["CPUExecutionProvider"])


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(COLOR_MODE), dtype=np.float32) / np.float32(255.0)


def classify(session: onnxruntime.InferenceSession, images: list[bytes]) -> np.ndarray:
    """Probabilities, (len(images), classes) float32."""
    batch = np.stack([decode(data) for data in images])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
