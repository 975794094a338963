"""Model runtimes: ``load_runtime(runtime_file, version_dir)`` and ``Runtime.predict(batch)``.

ONNX Runtime serves by default: it needs no TensorFlow, starts in milliseconds and runs a small MLP in
microseconds. The Keras runtime is the reference the ONNX export was checked against at publish time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from contract.metadata import RuntimeFile, VersionMetadata
from contract.ood import DISTANCE_OUTPUT  # the out-of-distribution statistic some graphs answer


class Runtime(Protocol):
    kind: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 batch in the model's input shape -> (batch, classes) probabilities."""

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The probabilities and, when the graph has it, each image's feature distance, in one call."""


class OnnxRuntime:
    """The float32 export ("onnx") or its int8 copy ("onnx_int8"): the same session, a different file."""

    def __init__(self, model_path: Path, kind: str = "onnx", threads: int = 1):
        self.kind = kind
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Workers are the unit of parallelism; threads inside one would fight them for the same cores, so there
        # are more than one only where the CPUs allow it (service.sizing).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.has_distance = any(o.name == DISTANCE_OUTPUT for o in self.session.get_outputs())
        self._outputs = [self.output_name, DISTANCE_OUTPUT] if self.has_distance else [self.output_name]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(self._outputs, {self.input_name: batch})
        return outputs[0], (outputs[1] if self.has_distance else None)


class KerasRuntime:
    kind = "keras"

    def __init__(self, model_path: Path):
        import keras  # imported here: TensorFlow is only needed when this runtime is chosen

        self.model = keras.models.load_model(model_path, compile=False)

    has_distance = False  # the feature distance is in the ONNX graphs only

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.predict(batch), None


def resolve_kind(requested: str, metadata: VersionMetadata) -> str:
    """The runtime a version is served with: "auto" takes the first of int8 and float32 ONNX it publishes."""
    if requested != "auto":
        return requested
    return next((kind for kind in ("onnx_int8", "onnx") if kind in metadata.runtimes), "onnx")


def load_runtime(runtime_file: RuntimeFile, version_dir: Path, threads: int = 1) -> Runtime:
    """Load the model file a version's metadata names for this runtime, with ``threads`` intra-op threads."""
    path = version_dir / runtime_file.file
    return KerasRuntime(path) if runtime_file.kind == "keras" else OnnxRuntime(path, runtime_file.kind, threads)
