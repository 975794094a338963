"""An int8 copy of the exported graph, measured on the whole test set before it may be published.

A single image through a dense network reads every weight once, so batch-1 inference is bound by how fast
the weights come from memory: int8 weights are a quarter of the bytes and halve the served latency of the
CIFAR-10 model. The quantization is static: activation scales are calibrated here on training images, so
an image's result never depends on the other images in its batch, and the accuracy recorded here is
exactly what the service gives. Weights use 7 bits (``reduce_range``): CPUs without VNNI would otherwise
saturate int16 sums, and every CPU computes the same results. Each output column of a weight matrix has its own
scale (per channel): a low-rank factor's columns differ in size by their singular values, and one scale for the
whole matrix cost Fashion-MNIST's factored model a tenth of a point of accuracy (docs/training.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from training.evaluation import calibration_figures
from training.export import INPUT_NAME, onnx_probabilities

CALIBRATION_IMAGES = 2000
CALIBRATION_SEED = 0
CALIBRATION_PERCENTILE = 99.99
# The int8 model is published only if it loses at most this much test accuracy.
MAX_ACCURACY_LOSS = 0.005
# Outputs recorded for the service's load-time check; int8 kernels differ between CPUs in their last bits.
INT8_VERIFICATION_TOLERANCE = 1e-3
METHOD = (f"static int8 matrix products (ONNX Runtime QLinearMatMul), activations calibrated on "
          f"{CALIBRATION_IMAGES} training images at the {CALIBRATION_PERCENTILE} percentile, 7-bit per-channel "
          "weights, one scale per output column; bias, ReLU and softmax in float32")


def calibration_inputs(train_inputs: np.ndarray) -> np.ndarray:
    """A fixed random sample of training images, so the same model always quantizes the same way."""
    count = min(CALIBRATION_IMAGES, len(train_inputs))
    chosen = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(train_inputs), count, replace=False))
    return train_inputs[chosen]


def quantize_onnx(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """The int8 model for ``onnx_bytes``, with activation ranges taken from ``calibration`` (float32 inputs)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT_NAME: calibration[i:i + 100]} for i in range(0, len(calibration), 100)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="quantize-") as workdir:
        source, target = Path(workdir) / "model.onnx", Path(workdir) / "model.int8.onnx"
        source.write_bytes(onnx_bytes)
        # The quantizer prints progress and suggests a pre-processing pass a plain MLP does not need.
        with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
            quantize_static(
                source, target, Batches(),
                quant_format=QuantFormat.QOperator,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # Only the matrix products: they are the weights' bytes. Bias, ReLU and softmax stay float,
                # so the probabilities are not rounded to 1/256 steps.
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=True,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            )
        return target.read_bytes()


def quantize_and_measure(onnx_bytes: bytes, train_inputs: np.ndarray, test_inputs: np.ndarray,
                         test_labels: np.ndarray, reference_probabilities: np.ndarray,
                         reference_accuracy: float) -> tuple[bytes | None, dict]:
    """Quantize, run the int8 model over the whole test set, and accept it only within MAX_ACCURACY_LOSS."""
    int8_bytes = quantize_onnx(onnx_bytes, calibration_inputs(train_inputs))
    probabilities = onnx_probabilities(int8_bytes, test_inputs)
    predictions = probabilities.argmax(axis=1)
    correct = int(np.sum(predictions == test_labels))
    report = {
        "method": METHOD,
        "test_accuracy": correct / len(test_labels),
        "correct": correct,
        "samples": int(len(test_labels)),
        "agreement_with_keras": float(np.mean(predictions == reference_probabilities.argmax(axis=1))),
        "max_abs_diff_vs_keras": float(np.max(np.abs(probabilities - reference_probabilities))),
        **calibration_figures(test_labels, probabilities),
    }
    loss = reference_accuracy - report["test_accuracy"]
    if loss > MAX_ACCURACY_LOSS + 1e-9:  # exactly the allowed loss is allowed, whatever the float rounding
        report["published"] = False
        report["reason"] = f"int8 loses {loss:.2%} test accuracy (at most {MAX_ACCURACY_LOSS:.2%} allowed)"
        return None, report
    report["published"] = True
    return int8_bytes, report


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
