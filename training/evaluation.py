"""Classification metrics from labels and predicted probabilities (plain NumPy, no framework)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def model_accuracy(model, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of anything with Keras' ``predict`` on float32 inputs in [0, 1]."""
    probabilities = model.predict(inputs, batch_size=1000, verbose=0)
    return float(np.mean(probabilities.argmax(axis=1) == np.asarray(labels).reshape(-1)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, log loss, per-class precision/recall/F1 and the confusion matrix, JSON-ready."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    y_pred = np.argmax(probabilities, axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    true_positives = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    picked = probabilities[np.arange(len(y_true)), y_true]
    log_loss = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
    return {
        "samples": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "correct": int(np.sum(y_pred == y_true)),
        "log_loss": round(log_loss, 6),
        "macro_f1": round(float(np.mean(f1)), 6),
        "per_class": [
            {"class": name, "precision": round(float(p), 6), "recall": round(float(r), 6),
             "f1": round(float(f), 6), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, actual)
        ],
        "confusion_matrix": matrix.tolist(),
    }


CALIBRATION_BINS = 15


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Equal-width bins of top-1 probability: per bin, how many images, their mean confidence and accuracy."""
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true).reshape(-1)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        chosen = index == i
        count = int(chosen.sum())
        rows.append({"lower": i / bins, "upper": (i + 1) / bins, "samples": count,
                     "confidence": float(confidence[chosen].mean()) if count else None,
                     "accuracy": float(correct[chosen].mean()) if count else None})
    return rows


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the sample-weighted mean gap between confidence and accuracy over the reliability bins."""
    total = len(probabilities)
    return float(sum(row["samples"] / total * abs(row["confidence"] - row["accuracy"])
                     for row in reliability_bins(y_true, probabilities, bins) if row["samples"]))


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(probabilities)), np.asarray(y_true).reshape(-1)]
    return float(-np.mean(np.log(np.clip(picked.astype(np.float64), 1e-12, 1.0))))


def calibration_figures(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    return {"ece": round(expected_calibration_error(y_true, probabilities), 6),
            "nll": round(negative_log_likelihood(y_true, probabilities), 6)}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, iterations: int = 80) -> float:
    """The temperature T minimizing the NLL of softmax(logits / T) (Guo et al. 2017).

    The NLL is convex in 1/T, so a golden-section search over log T in [e^-3, e^3] finds the minimum; it is
    deterministic, so the same logits always give the same temperature.
    """
    logits = np.asarray(logits, np.float64)
    y_true = np.asarray(y_true).reshape(-1)

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        log_norm = np.log(np.exp(scaled - scaled.max(axis=1, keepdims=True)).sum(axis=1)) + scaled.max(axis=1)
        return float(np.mean(log_norm - scaled[np.arange(len(scaled)), y_true]))

    ratio = (np.sqrt(5) - 1) / 2
    low, high = -3.0, 3.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(np.exp((low + high) / 2))
