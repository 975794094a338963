"""Prediction sets with a coverage guarantee (split conformal, adaptive prediction sets): pure maths.

Training fits the thresholds on a calibration hold-out at publish time and records them in metadata.json; the
service turns each answer's probabilities into a set with the same functions, so both sides agree to the bit.

The score of class k for one image is APS's (Romano et al. 2020): the probability mass of the classes ranked
above k, plus ``u`` times k's own probability. ``u`` is uniform in [0, 1), which is what makes the coverage
exact rather than only at least the target; it is drawn from the image's prediction id (a SHA-256 of its
normalized pixels), so the same image always gets the same set. The set at coverage ``c`` holds every class
whose score is at most the threshold, the ceil((n + 1) c)-th smallest score of the true classes among ``n``
calibration images: over exchangeable images, it contains the true class with probability at least ``c``.
Marginal thresholds take every calibration image; per-class (Mondrian) ones take only the images of that class,
so the guarantee holds for each true class, not just on average.
"""

from __future__ import annotations

import math

import numpy as np

COVERAGE_LEVELS = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))  # 0.50, 0.51, ..., 0.99
GUARANTEES = ("per_class", "marginal")
METHOD = ("split conformal prediction, adaptive prediction sets (APS, Romano et al. 2020) randomized by the "
          "prediction id, thresholds per class (Mondrian) and marginal, fitted on a calibration hold-out of the "
          "validation split with the served runtime's probabilities")


def tie_breaks(ids: list[str]) -> np.ndarray:
    """Per image, the uniform ``u`` in [0, 1) its APS scores use: the first 64 bits of its prediction id."""
    return np.array([int(image_id[:16], 16) / 2.0 ** 64 for image_id in ids], dtype=np.float64)


def class_scores(probabilities: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(images, classes) APS scores: the mass ranked strictly above each class, plus ``u`` times its own.
    Classes of equal probability are ranked by index, the order ``argsort(kind="stable")`` gives."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(ranked, axis=1) - ranked
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, above + u[:, np.newaxis] * ranked, axis=1)
    return scores


def conformal_threshold(scores: np.ndarray, coverage: float) -> float | None:
    """The ceil((n + 1) coverage)-th smallest score; None when that rank is past n (every class is needed)."""
    rank = math.ceil((len(scores) + 1) * coverage - 1e-9)
    if rank > len(scores):
        return None
    return float(np.partition(np.asarray(scores, dtype=np.float64), rank - 1)[rank - 1])


def _stored(value: float | None) -> float | None:
    """Thresholds as metadata.json keeps them. Rounded up, so a stored threshold never drops a class the exact
    one keeps; what the model card measures is what the service does with the stored figure."""
    return None if value is None else math.ceil(value * 1e9) / 1e9


def fit_thresholds(probabilities: np.ndarray, labels: np.ndarray, u: np.ndarray, classes: int) -> dict:
    """The metadata.json record: per coverage level, the marginal threshold and one per class."""
    labels = np.asarray(labels)
    true_scores = class_scores(probabilities, u)[np.arange(len(labels)), labels]
    per_class_scores = [true_scores[labels == k] for k in range(classes)]
    return {
        "levels": list(COVERAGE_LEVELS),
        "marginal": [_stored(conformal_threshold(true_scores, c)) for c in COVERAGE_LEVELS],
        "per_class": [[_stored(conformal_threshold(s, c)) for c in COVERAGE_LEVELS] for s in per_class_scores],
        "samples": int(len(labels)),
        "samples_per_class": [int(len(s)) for s in per_class_scores],
    }


class Thresholds:
    """A version's fitted thresholds, ready for building sets."""

    def __init__(self, record: dict):
        self.levels = [round(float(c), 2) for c in record["levels"]]
        self.samples = int(record["samples"])
        self._marginal = np.array([_threshold_value(t) for t in record["marginal"]])
        self._per_class = np.array([[_threshold_value(t) for t in row] for row in record["per_class"]])

    def for_level(self, coverage: float, guarantee: str) -> np.ndarray:
        """The per-class thresholds one set is built with (the marginal one repeated for every class)."""
        column = self.levels.index(round(coverage, 2))
        if guarantee == "marginal":
            return np.full(self._per_class.shape[0], self._marginal[column])
        return self._per_class[:, column]


def _threshold_value(stored: float | None) -> float:
    return math.inf if stored is None else float(stored)


def prediction_sets(probabilities: np.ndarray, u: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(images, classes) booleans: which classes are in each image's set."""
    return class_scores(probabilities, u) <= thresholds[np.newaxis, :]


def coverage_report(probabilities: np.ndarray, labels: np.ndarray, u: np.ndarray, thresholds: Thresholds,
                    class_names: tuple[str, ...], levels: tuple[float, ...] = (0.8, 0.9, 0.95)) -> dict:
    """Empirical coverage and mean set size on labeled images (the test split), overall and per true class,
    for each guarantee at a few levels: the model card's table."""
    labels = np.asarray(labels)
    report = {}
    for guarantee in GUARANTEES:
        rows = []
        for level in levels:
            sets = prediction_sets(probabilities, u, thresholds.for_level(level, guarantee))
            covered = sets[np.arange(len(labels)), labels]
            sizes = sets.sum(axis=1)
            per_class = [{"class": name, "coverage": round(float(covered[labels == k].mean()), 4),
                          "mean_set_size": round(float(sizes[labels == k].mean()), 3)}
                         for k, name in enumerate(class_names) if np.any(labels == k)]
            rows.append({"coverage_target": level, "coverage": round(float(covered.mean()), 4),
                         "mean_set_size": round(float(sizes.mean()), 3),
                         "empty_sets": round(float((sizes == 0).mean()), 4),
                         "min_class_coverage": min(row["coverage"] for row in per_class),
                         "per_class": per_class})
        report[guarantee] = rows
    return report
