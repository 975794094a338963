"""What goes into one version folder: model files, metadata.json, verification samples, model card.

``metadata.json`` is the contract with the service: it says what the model expects (input shape, color mode,
preprocessing) and what it was measured to do. The service reads nothing from this package.
"""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path

import keras
import numpy as np
import onnx

from training.datasets import Dataset
from training.evaluation import calibration_figures, reliability_bins
from training.export import ONNX_OPSET, keras_to_onnx, onnx_probabilities
from training.modelcard import write_model_card
from contract.layout import sha256_file
from contract.metadata import SCHEMA_VERSION, write_metadata
from contract.ood import verification_distance_key
from training.quantize import INT8_VERIFICATION_TOLERANCE, quantize_and_measure
from training.reference import training_reference
from training.train import TrainingResult, split, to_model_input
from training.uncertainty import (
    fit_feature_distance,
    probe_images,
    served_outputs,
    uncertainty_records,
    with_distance_output,
)

KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
VERIFICATION_FILE = "verification.npz"
VERIFICATION_SAMPLES = 32
# The exported graph must reproduce Keras' probabilities to this absolute tolerance.
EXPORT_TOLERANCE = 1e-4


class VerificationError(Exception):
    """The exported model does not compute what the Keras model computes."""


def library_versions() -> dict[str, str]:
    import onnxruntime
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def export_and_verify(result: TrainingResult) -> tuple[bytes, dict]:
    """Export to ONNX and run the export over the whole test set, beside Keras' own predictions."""
    onnx_bytes = keras_to_onnx(result.model).SerializeToString()
    probabilities = onnx_probabilities(onnx_bytes, result.test_inputs)
    max_diff = float(np.max(np.abs(probabilities - result.test_probabilities)))
    if not max_diff <= EXPORT_TOLERANCE:
        raise VerificationError(f"ONNX export differs from Keras by {max_diff:.2e} (tolerance {EXPORT_TOLERANCE})")
    onnx_predictions = probabilities.argmax(axis=1)
    correct = int(np.sum(onnx_predictions == result.test_labels))
    report = {
        "max_abs_diff_vs_keras": max_diff,
        "agreement_with_keras": float(np.mean(onnx_predictions == result.test_probabilities.argmax(axis=1))),
        "test_accuracy": correct / len(result.test_labels),
        "correct": correct,
        "samples": int(len(result.test_labels)),
        **calibration_figures(result.test_labels, probabilities),
    }
    return onnx_bytes, report


def build_metadata(dataset: Dataset, result: TrainingResult, version: int, onnx_report: dict,
                   int8_report: dict) -> dict:
    spec = dataset.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "image-classification",
        "classes": list(spec.classes),
        "input": {
            "shape": list(spec.image_shape),
            "dtype": "float32",
            "color_mode": spec.color_mode,
            "value_range": [0.0, 1.0],
            "layout": "HWC" if len(spec.image_shape) == 3 else "HW",
        },
        "preprocessing": {
            "decode": "Pillow; first frame; EXIF orientation applied; transparency composited over white",
            "color_mode": spec.color_mode,
            "resize": "fit inside the input size keeping the aspect ratio, pad with the border's median color",
            "invert_light_background": spec.dark_background,
            "scale": "pixel / 255",
            "standardization": {"applied": "inside the model", **result.standardization},
        },
        "metrics": {
            "test": result.test_metrics,
            "validation": result.validation_metrics,
            **({"production": result.extra["production"]} if "production" in result.extra else {}),
            **({"baseline": result.extra["baseline"]} if "baseline" in result.extra else {}),
        },
        "training": {
            "config": result.config.to_json(),
            "epochs_run": len(next(iter(result.history.values()), [])),
            "duration_seconds": round(result.duration_seconds, 1),
            "parameters": int(result.model.count_params()),
            **({"compression": result.extra["compression"]} if "compression" in result.extra else {}),
            "history": result.history,
        },
        "data": {
            "source": dataset.source,
            "fingerprint": dataset.fingerprint,
            "train_samples": int(len(dataset.x_train)),
            "test_samples": int(len(dataset.x_test)),
            "note": dataset.note,
        },
        "runtimes": {
            "onnx": {"file": ONNX_FILE, "opset": ONNX_OPSET, **onnx_report},
            "keras": {"file": KERAS_FILE},
            # Only when it kept its accuracy; "quantization" below says either way.
            **({"onnx_int8": {"file": INT8_ONNX_FILE, **int8_report,
                              "verification": {"outputs": "probabilities_onnx_int8",
                                               "atol": INT8_VERIFICATION_TOLERANCE}}}
               if int8_report["published"] else {}),
        },
        "quantization": int8_report,
        "verification": {"file": VERIFICATION_FILE, "samples": VERIFICATION_SAMPLES, "atol": EXPORT_TOLERANCE},
        "libraries": library_versions(),
    }


def save_inference_model(model: keras.Model, path: Path) -> None:
    """Save the layers and weights without the optimizer's state, which is twice the weights' size."""
    inference_model = keras.Model.from_config(model.get_config())
    inference_model.set_weights(model.get_weights())
    inference_model.save(path)


def add_feature_distance(dataset: Dataset, result: TrainingResult, onnx_bytes: bytes,
                         int8_bytes: bytes | None) -> tuple[bytes, bytes | None]:
    """Both graphs with the ``feature_distance`` output, fitted on the run's training images (the validation
    hold-out excluded, so its distances are those of unseen images)."""
    data = split(dataset, result.config)
    whitening, means = fit_feature_distance(onnx_bytes, to_model_input(data.x_train), data.y_train,
                                            len(dataset.spec.classes))
    return (with_distance_output(onnx_bytes, whitening, means),
            with_distance_output(int8_bytes, whitening, means) if int8_bytes is not None else None)


def write_artifact(folder: Path, version: int, dataset: Dataset, result: TrainingResult,
                   report=lambda line: None) -> dict:
    """Write every file of one version into ``folder``; metadata.json, with the files' hashes, comes last."""
    onnx_bytes, onnx_report = export_and_verify(result)
    int8_bytes, int8_report = quantize_and_measure(
        onnx_bytes, to_model_input(dataset.x_train), result.test_inputs, result.test_labels,
        result.test_probabilities, onnx_report["test_accuracy"])
    uncertainty = None
    if result.holdout_inputs is not None and len(result.holdout_inputs) >= 20:
        onnx_bytes, int8_bytes = add_feature_distance(dataset, result, onnx_bytes, int8_bytes)
        uncertainty = uncertainty_records(int8_bytes or onnx_bytes, result.holdout_inputs, result.holdout_labels,
                                          result.test_inputs, result.test_labels, dataset.spec.classes,
                                          probe_images(dataset, dataset.data_dir, report))
    save_inference_model(result.model, folder / KERAS_FILE)
    (folder / ONNX_FILE).write_bytes(onnx_bytes)
    count = min(VERIFICATION_SAMPLES, len(result.test_inputs))
    # uint8 pixels keep the file small; the service scales them exactly as it scales an upload.
    samples = {"pixels": np.round(result.test_inputs[:count] * 255).astype(np.uint8),
               "probabilities": result.test_probabilities[:count].astype(np.float32)}
    if int8_bytes is not None:
        (folder / INT8_ONNX_FILE).write_bytes(int8_bytes)
        samples["probabilities_onnx_int8"] = onnx_probabilities(int8_bytes, result.test_inputs[:count])
    if uncertainty is not None:
        for key, graph in (("probabilities", onnx_bytes), ("probabilities_onnx_int8", int8_bytes)):
            if graph is not None:
                samples[verification_distance_key(key)] = served_outputs(graph, result.test_inputs[:count])[1]
    np.savez_compressed(folder / VERIFICATION_FILE, **samples)
    metadata = build_metadata(dataset, result, version, onnx_report, int8_report)
    if result.calibration is not None:
        served = "onnx_int8" if int8_bytes is not None else "onnx"
        served_probabilities = onnx_probabilities(int8_bytes or onnx_bytes, result.test_inputs)
        calibration = copy.deepcopy(result.calibration)
        calibration["served"] = {"runtime": served, **calibration_figures(result.test_labels, served_probabilities)}
        calibration["reliability"] = {"before": calibration["test"].pop("reliability_before"),
                                      "served": reliability_bins(result.test_labels, served_probabilities)}
        metadata["calibration"] = calibration
    metadata["monitoring_reference"] = training_reference(dataset, onnx_bytes)
    if uncertainty is not None:
        metadata.update(uncertainty)
    write_model_card(folder, metadata)
    metadata["files"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    write_metadata(folder, metadata)
    return metadata
