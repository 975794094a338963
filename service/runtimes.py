"""Model runtimes: ``load_runtime(kind, version_dir, metadata)`` and ``Runtime.predict(batch)``.

ONNX Runtime serves by default: it needs no TensorFlow, starts in milliseconds and runs a small MLP in
microseconds. The Keras runtime is the reference the ONNX export was checked against at publish time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    kind: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 batch in the model's input shape -> (batch, classes) probabilities."""


class OnnxRuntime:
    """The float32 export ("onnx") or its int8 copy ("onnx_int8"): the same session, a different file."""

    def __init__(self, model_path: Path, kind: str = "onnx"):
        self.kind = kind
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Workers are the unit of parallelism; threads inside one would fight them for the same cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class KerasRuntime:
    kind = "keras"

    def __init__(self, model_path: Path, kind: str = "keras"):
        import keras  # imported here: TensorFlow is only needed when this runtime is chosen

        self.model = keras.models.load_model(model_path, compile=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))


RUNTIMES = {"onnx_int8": OnnxRuntime, "onnx": OnnxRuntime, "keras": KerasRuntime}


def resolve_kind(requested: str, metadata: dict) -> str:
    """The runtime a version is served with: "auto" takes the first of int8 and float32 ONNX it publishes."""
    if requested != "auto":
        return requested
    return next((kind for kind in ("onnx_int8", "onnx") if kind in metadata.get("runtimes", {})), "onnx")


def load_runtime(kind: str, version_dir: Path, metadata: dict) -> Runtime:
    """Load the model file that ``metadata['runtimes'][kind]`` names."""
    try:
        file_name = metadata["runtimes"][kind]["file"]
    except KeyError:
        raise ValueError(f"the metadata names no {kind!r} model file") from None
    return RUNTIMES[kind](version_dir / file_name, kind)
