"""Is the model still seeing what it was trained on, and is it still sure? Input statistics, confidence and drift.

Pure parts first: the per-image statistics (mean intensity, contrast), the reference profile that publishing
records in metadata.json (the same statistics binned at their deciles, the predicted-class mix and the
confidence on training images), and the population stability index (PSI) between a window and that reference.
Training imports these, so the reference and the live statistics are computed by the same code.

Then ``DriftWindow``: per worker and model, the last ``window`` images' bins, whose PSI against the reference
goes to a gauge every few images. Each worker sees a random share of the traffic, so its window is a sample of
the same stream; the gauge shows the most recent worker's value.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

import numpy as np

REFERENCE_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin counts as this fraction: PSI stays finite
SIGNALS = ("mean_intensity", "contrast", "predicted_class")


def image_statistics(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image of a normalized batch: mean intensity and contrast (standard deviation), both in [0, 1]."""
    flat = batch.reshape(len(batch), -1)
    means = flat.sum(axis=1) / flat.shape[1]
    squares = np.einsum("ij,ij->i", flat, flat) / flat.shape[1]
    return means, np.sqrt(np.maximum(squares - means * means, 0.0))


def quantile_edges(values: np.ndarray, bins: int = REFERENCE_BINS) -> list[float]:
    """The inner edges that cut ``values`` into ``bins`` equally full bins."""
    return [float(x) for x in np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])]


def bin_fractions(values: np.ndarray, edges: list[float]) -> list[float]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return [float(x) for x in counts / max(len(values), 1)]


def reference_profile(batch: np.ndarray, probabilities: np.ndarray, low_confidence_threshold: float,
                      source: str) -> dict:
    """What the model saw and said on ``batch`` (normalized images of its training data), for metadata.json."""
    means, contrasts = image_statistics(batch)
    top1 = probabilities.max(axis=1)
    predicted = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1]) / len(batch)
    profile = {"source": source, "samples": int(len(batch))}
    for name, values in (("mean_intensity", means), ("contrast", contrasts)):
        edges = quantile_edges(values)
        profile[name] = {"edges": edges, "fractions": bin_fractions(values, edges)}
    profile["predicted_class"] = {"fractions": [float(x) for x in predicted]}
    profile["top1_probability_mean"] = float(top1.mean())
    profile["low_confidence"] = {"threshold": low_confidence_threshold,
                                 "fraction": float((top1 < low_confidence_threshold).mean())}
    return profile


def population_stability_index(observed, expected) -> float:
    """PSI = sum (o - e) ln(o / e) over bins of two distributions; below 0.1 is stable, above 0.25 a shift.
    Plain Python: over ten bins it is several times faster than NumPy's per-call overhead."""
    o = [max(float(x), PSI_FLOOR) for x in observed]
    e = [max(float(x), PSI_FLOOR) for x in expected]
    o_total, e_total = sum(o), sum(e)
    return sum((a / o_total - b / e_total) * math.log((a / o_total) / (b / e_total)) for a, b in zip(o, e))


@dataclass(frozen=True)
class Reference:
    """A model's reference profile, ready for binning live images."""

    edges: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    top1_probability_mean: float

    @classmethod
    def from_metadata(cls, metadata: dict) -> Reference | None:
        profile = metadata.get("monitoring_reference")
        if not profile:
            return None
        edges = {name: np.asarray(profile[name]["edges"]) for name in ("mean_intensity", "contrast")}
        expected = {name: np.asarray(profile[name]["fractions"]) for name in SIGNALS}
        return cls(edges, expected, float(profile["top1_probability_mean"]))


class DriftWindow:
    """The bins of the last ``size`` images for each signal, kept as running counts (plain Python: a request
    adds one image or a few, where NumPy's per-call overhead would dominate)."""

    def __init__(self, reference: Reference, size: int):
        self.reference = reference
        self.size = size
        self.mean_edges = reference.edges["mean_intensity"].tolist()
        self.contrast_edges = reference.edges["contrast"].tolist()
        self.recent: deque[tuple[int, int, int]] = deque()
        self.counts = {name: [0] * len(reference.expected[name]) for name in SIGNALS}

    def add(self, means, contrasts, predicted) -> None:
        mean_counts, contrast_counts = self.counts["mean_intensity"], self.counts["contrast"]
        class_counts = self.counts["predicted_class"]
        for mean, contrast, label in zip(means, contrasts, predicted):
            bins = (bisect_right(self.mean_edges, mean), bisect_right(self.contrast_edges, contrast), int(label))
            self.recent.append(bins)
            mean_counts[bins[0]] += 1
            contrast_counts[bins[1]] += 1
            class_counts[bins[2]] += 1
            if len(self.recent) > self.size:
                old = self.recent.popleft()
                mean_counts[old[0]] -= 1
                contrast_counts[old[1]] -= 1
                class_counts[old[2]] -= 1

    @property
    def filled(self) -> int:
        return len(self.recent)

    def psi(self) -> dict[str, float]:
        return {name: population_stability_index(self.counts[name], self.reference.expected[name].tolist())
                for name in SIGNALS}
