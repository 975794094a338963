"""The statistics drift is measured with, and how far apart two distributions of them are: pure maths.

Per normalized image: its mean intensity and its contrast (standard deviation). A version's reference profile,
recorded in its metadata.json at publish time, is those statistics on training images binned at their deciles,
plus the predicted-class mix and the confidence there. The population stability index (PSI) compares a window
of live images with it. Training records the profile and the service measures the window with this one module,
so both sides compute the same thing.
"""

from __future__ import annotations

import math
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
    samples: int = 0  # the training images it was measured on

    @classmethod
    def from_profile(cls, profile: dict | None) -> Reference | None:
        """The profile as metadata.json records it (``monitoring_reference``); None without one."""
        if not profile:
            return None
        edges = {name: np.asarray(profile[name]["edges"]) for name in ("mean_intensity", "contrast")}
        expected = {name: np.asarray(profile[name]["fractions"]) for name in SIGNALS}
        return cls(edges, expected, float(profile["top1_probability_mean"]), int(profile.get("samples", 0)))
