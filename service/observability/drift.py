"""``DriftWindow``: per model version, the bins of the last ``size`` images the service classified, over all
its workers: a small memory-mapped file in the metrics folder that every worker adds to under a lock, and that
``/metrics`` reads, whichever worker answers. So the window and its PSI do not depend on how connections fall
on the workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
from pathlib import Path

import numpy as np

from contract.reference import SIGNALS, Reference, population_stability_index


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

    def reading(self) -> tuple[dict[str, float] | None, int]:
        """One consistent reading: the PSI per signal (None while the window is empty) and how many images the
        window holds."""
        counts, filled = self.read()
        return (self.psi(counts) if filled else None), filled

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
