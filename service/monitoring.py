"""Is the model still seeing what it was trained on, and is it still sure? Input statistics, confidence and drift.

Pure parts first: the per-image statistics (mean intensity, contrast), the reference profile that publishing
records in metadata.json (the same statistics binned at their deciles, the predicted-class mix and the
confidence on training images), and the population stability index (PSI) between a window and that reference.
Training imports these, so the reference and the live statistics are computed by the same code.

Then ``DriftWindow``: per model version, the bins of the last ``size`` images the service classified, over all
its workers: a small memory-mapped file in the metrics folder that every worker adds to under a lock, and that
``/metrics`` reads, whichever worker answers. So the window and its PSI do not depend on how connections fall
on the workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

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
    def from_metadata(cls, metadata: dict) -> Reference | None:
        profile = metadata.get("monitoring_reference")
        if not profile:
            return None
        edges = {name: np.asarray(profile[name]["edges"]) for name in ("mean_intensity", "contrast")}
        expected = {name: np.asarray(profile[name]["fractions"]) for name in SIGNALS}
        return cls(edges, expected, float(profile["top1_probability_mean"]), int(profile.get("samples", 0)))


class DriftWindow:
    """The bins of the last ``size`` images, kept as running counts per signal beside a ring of each image's bins.

    With ``path``, the counts and the ring live in that file, memory-mapped, and every process that opens the
    same path shares them: an ``add`` holds an exclusive ``flock`` (a few microseconds, once per flushed batch),
    a read a shared one. Without a path they live in this process only.
    """

    LAYOUT = 1  # of the file: a header (layout, size, next position, filled), the counts, the ring

    def __init__(self, reference: Reference, size: int, path: Path | None = None):
        self.reference = reference
        self.size = size
        self._edges = (reference.edges["mean_intensity"], reference.edges["contrast"])
        self._bins = [len(reference.expected[name]) for name in SIGNALS]
        self._offsets = np.cumsum([0, *self._bins])
        header_bytes, counts_bytes = 4 * 8, int(self._offsets[-1]) * 8
        total = header_bytes + counts_bytes + size * len(SIGNALS) * 2
        self._lock = threading.Lock()  # flock does not exclude the threads of one process
        self._fd = None
        if path is None:
            buffer = bytearray(total)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            with self._locked(fcntl.LOCK_EX):
                if os.fstat(self._fd).st_size != total:  # new (or of another size): start empty
                    os.ftruncate(self._fd, 0)
                    os.ftruncate(self._fd, total)
            buffer = mmap.mmap(self._fd, total)
        self._header = np.frombuffer(buffer, np.int64, 4, 0)
        self._counts = np.frombuffer(buffer, np.int64, int(self._offsets[-1]), header_bytes)
        self._ring = np.frombuffer(buffer, np.int16, size * len(SIGNALS), header_bytes + counts_bytes).reshape(
            size, len(SIGNALS))
        if self._header[0] == 0:
            self._header[:2] = (self.LAYOUT, size)

    @contextlib.contextmanager
    def _locked(self, operation: int):
        with self._lock:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, operation)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def add(self, means, contrasts, predicted) -> None:
        """Add images (their mean intensities, contrasts and predicted classes); the oldest beyond ``size`` go."""
        bins = np.stack([np.searchsorted(self._edges[0], means, side="right"),
                         np.searchsorted(self._edges[1], contrasts, side="right"),
                         np.asarray(predicted)], axis=1).astype(np.int16)[-self.size:]
        with self._locked(fcntl.LOCK_EX):
            position, filled = int(self._header[2]), int(self._header[3])
            slots = (position + np.arange(len(bins))) % self.size
            old = self._ring[slots[slots < filled]]  # slots already holding an image: it leaves the window
            for signal, (start, count) in enumerate(zip(self._offsets, self._bins)):
                self._counts[start:start + count] += (np.bincount(bins[:, signal], minlength=count)
                                                      - np.bincount(old[:, signal], minlength=count))
            self._ring[slots] = bins
            self._header[2:] = ((position + len(bins)) % self.size, min(self.size, filled + len(bins)))

    def read(self) -> tuple[dict[str, list[int]], int]:
        """The counts per signal and how many images the window holds, as one consistent reading."""
        with self._locked(fcntl.LOCK_SH):
            counts, filled = self._counts.copy(), int(self._header[3])
        return ({name: counts[start:start + count].tolist()
                 for name, start, count in zip(SIGNALS, self._offsets, self._bins)}, filled)

    @property
    def counts(self) -> dict[str, list[int]]:
        return self.read()[0]

    @property
    def filled(self) -> int:
        return self.read()[1]

    def psi(self, counts: dict[str, list[int]] | None = None) -> dict[str, float]:
        counts = self.counts if counts is None else counts
        return {name: population_stability_index(counts[name], self.reference.expected[name].tolist())
                for name in SIGNALS}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
