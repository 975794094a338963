import numpy as np

from training.evaluation import classification_metrics, confusion_matrix


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_metrics_from_probabilities():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    metrics = classification_metrics(np.array([0, 1, 1, 1]), probabilities, ["a", "b"])
    assert metrics["accuracy"] == 0.75 and metrics["correct"] == 3 and metrics["samples"] == 4
    a, b = metrics["per_class"]
    assert (a["precision"], a["recall"]) == (0.5, 1.0)
    assert (b["precision"], round(b["recall"], 4)) == (1.0, 0.6667)
    assert metrics["confusion_matrix"] == [[1, 0], [1, 2]]
