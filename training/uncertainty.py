"""What makes an answer actionable, fitted at publish time on the validation images nothing else was fitted on:
conformal thresholds (prediction sets with a coverage guarantee) and the out-of-distribution reference.

Both are fitted with the served runtime's own outputs (the int8 graph when it is published), so the guarantee
is about the answers the service gives, and both are measured once on the test split for the model card: the
empirical coverage and set size, and the AUROC of the out-of-distribution p-value against a dataset the model
never saw (``OOD_PROBES``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from contract import conformal, ood
from contract.ids import input_id
from training.datasets import Dataset, DatasetError, load_dataset
from contract.ood import DISTANCE_OUTPUT
from training.export import FEATURES_NAME, OUTPUT_NAME, onnx_outputs, onnx_run

DISTANCE_FIT_IMAGES = 20_000
COVARIANCE_RIDGE = 1e-6  # of the mean eigenvalue: keeps the covariance invertible where ReLU units never fire
# Per dataset: the dataset whose test images stand for inputs the model was not made for, and how they are
# shown to it (the service would pad, resize and convert them the same way).
OOD_PROBES = {
    "fashion_mnist": ("mnist", "MNIST digits"),
    "mnist": ("fashion_mnist", "Fashion-MNIST test images"),
    "cifar10": ("fashion_mnist", "Fashion-MNIST test images upscaled to 32x32 RGB"),
}
PROBE_IMAGES = 10_000


# --- the feature distance, inside the served graph ----------------------------------------------------------

def fit_feature_distance(float_onnx: bytes, inputs: np.ndarray, labels: np.ndarray,
                         classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and a shared covariance of the last hidden features on training images, as the whitening
    matrix ``L`` (``L L^T`` is the inverse covariance) and the whitened class means."""
    chosen = np.sort(np.random.default_rng(0).permutation(len(inputs))[:DISTANCE_FIT_IMAGES])
    features = onnx_outputs(float_onnx, inputs[chosen], FEATURES_NAME).astype(np.float64)
    labels = np.asarray(labels)[chosen]
    means = np.stack([features[labels == k].mean(axis=0) if np.any(labels == k) else features.mean(axis=0)
                      for k in range(classes)])
    centered = features - means[labels]
    covariance = centered.T @ centered / len(features)
    covariance += COVARIANCE_RIDGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    return whitening.astype(np.float32), (means @ whitening).astype(np.float32)


def with_distance_output(model_bytes: bytes, whitening: np.ndarray, whitened_means: np.ndarray) -> bytes:
    """The graph with a ``feature_distance`` output: min over classes of ||f L - m_k||^2, in float32 beside the
    probabilities (one more matrix product per image, in the same session call)."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(whitening, "ood_whitening"),
        numpy_helper.from_array(np.ascontiguousarray(whitened_means.T), "ood_means_t"),
        numpy_helper.from_array((whitened_means.astype(np.float64) ** 2).sum(axis=1).astype(np.float32),
                                "ood_means_norm"),
        numpy_helper.from_array(np.array([2.0], np.float32), "ood_two"),
    ])
    graph.node.extend([
        helper.make_node("MatMul", [FEATURES_NAME, "ood_whitening"], ["ood_whitened"]),
        helper.make_node("ReduceSumSquare", ["ood_whitened"], ["ood_norm"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["ood_whitened", "ood_means_t"], ["ood_cross"]),
        helper.make_node("Mul", ["ood_cross", "ood_two"], ["ood_cross2"]),
        helper.make_node("Sub", ["ood_norm", "ood_cross2"], ["ood_partial"]),
        helper.make_node("Add", ["ood_partial", "ood_means_norm"], ["ood_distances"]),
        helper.make_node("ReduceMin", ["ood_distances"], [DISTANCE_OUTPUT], axes=[1], keepdims=0),
    ])
    # The features were an output only to be read here; the served graph answers probabilities and the distance.
    outputs = [o for o in graph.output if o.name == OUTPUT_NAME]
    del graph.output[:]
    graph.output.extend([*outputs, helper.make_tensor_value_info(DISTANCE_OUTPUT, TensorProto.FLOAT, ["batch"])])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def served_outputs(model_bytes: bytes, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, feature distances) of the served graph over ``inputs``."""
    probabilities, distances = onnx_run(model_bytes, inputs, [OUTPUT_NAME, DISTANCE_OUTPUT])
    return probabilities, distances


# --- conformal sets and the out-of-distribution reference -----------------------------------------------------

def probe_images(dataset: Dataset, data_dir, report: Callable[[str], None]) -> tuple[np.ndarray, str] | None:
    """The out-of-distribution probe for ``dataset``'s model, as float inputs of its shape, and what it is; None
    (and said) when the probe dataset cannot be loaded."""
    probe_name, description = OOD_PROBES.get(dataset.spec.name, (None, None))
    if probe_name is None:
        return None
    try:  # local copies only: publishing never downloads a dataset it was not asked to train on
        probe = load_dataset(probe_name, data_dir, download=False)
    except DatasetError as error:
        report(f"out-of-distribution AUROC not measured: {error}")
        return None
    images = np.concatenate([probe.x_test, probe.x_train])[:PROBE_IMAGES]
    if images.shape[1:] != dataset.spec.image_shape:
        height, width = dataset.spec.image_shape[:2]
        mode = "RGB" if dataset.spec.color_mode == "rgb" else "L"
        images = np.stack([np.asarray(Image.fromarray(image).convert(mode).resize((width, height), Image.BILINEAR))
                           for image in images])
    return images.astype(np.float32) / np.float32(255.0), f"{description}: {len(images):,} from {probe.source}"


def uncertainty_records(served_bytes: bytes, holdout_inputs: np.ndarray, holdout_labels: np.ndarray,
                        test_inputs: np.ndarray, test_labels: np.ndarray, classes: tuple[str, ...],
                        probe: tuple[np.ndarray, str] | None) -> dict:
    """metadata.json's ``conformal`` and ``out_of_distribution`` records, with their test-split figures.

    The conformal thresholds take the whole hold-out. The out-of-distribution p-value takes its two halves: the
    first for the three statistics' tables, the second for the distribution of their combination."""
    holdout_p, holdout_d = served_outputs(served_bytes, holdout_inputs)
    test_p, test_d = served_outputs(served_bytes, test_inputs)
    holdout_u = conformal.tie_breaks([input_id(x) for x in holdout_inputs])
    test_u = conformal.tie_breaks([input_id(x) for x in test_inputs])
    thresholds = conformal.fit_thresholds(holdout_p, holdout_labels, holdout_u, len(classes))
    coverage = conformal.coverage_report(test_p, test_labels, test_u, conformal.Thresholds(thresholds), classes)
    half = len(holdout_inputs) // 2
    record = ood.fit_record(holdout_inputs[:half], holdout_d[:half], holdout_inputs[half:], holdout_d[half:])
    test_score, test_p_value = ood.ood_scores(record, test_inputs, test_d)
    measured = {"test_images": int(len(test_inputs)),
                "test_flagged_at_0.01": round(float((test_p_value <= 0.01).mean()), 4)}
    if probe is not None:
        probe_inputs, description = probe
        _, probe_d = served_outputs(served_bytes, probe_inputs)
        probe_score, probe_p = ood.ood_scores(record, probe_inputs, probe_d)
        measured.update({"probe": description, "probe_images": int(len(probe_inputs)),
                         "auroc": round(ood.auroc(test_score, probe_score), 4),
                         "probe_flagged_at_0.01": round(float((probe_p <= 0.01).mean()), 4),
                         "auroc_by_statistic": statistic_aurocs(record, test_inputs, test_d, probe_inputs, probe_d)})
    return {
        "conformal": {"method": conformal.METHOD, **thresholds, "test": coverage},
        "out_of_distribution": {**record, "reference": f"{len(holdout_inputs)} validation images held out of "
                                "training and calibration", "test": measured},
    }


def statistic_aurocs(record: dict, test_inputs, test_d, probe_inputs, probe_d) -> dict:
    """Each statistic's own AUROC (as its p-value), beside the combination's: what each contributes."""
    test_p = ood.component_p_values(record, ood.input_statistics(test_inputs, test_d))
    probe_p = ood.component_p_values(record, ood.input_statistics(probe_inputs, probe_d))
    return {name: round(ood.auroc(-np.log(a), -np.log(b)), 4)
            for name, a, b in zip(ood.STATISTICS, test_p, probe_p)}

