"""Classification metrics from labels and predicted probabilities (plain NumPy, no framework)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
