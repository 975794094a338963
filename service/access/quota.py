"""Per-key quotas as GCRA cells (the token bucket kept as one number, its theoretical arrival time), so a quota is
one read and one write under a lock: in memory for one process, in a small file per cell for the workers of one
replica, in a database row for replicas that share ``DATABASE_URL``.

``take(cell, cost, rate, burst)`` admits ``cost`` units when the bucket of ``burst`` units, refilled at ``rate``
a second, holds them; else it returns the seconds until it would. Every store decides under a lock that spans
the read and the write, so two workers never both spend the last unit: quotas are exact, within clock skew.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from pathlib import Path
from typing import Protocol

TAT = struct.Struct("d")


def admit(tat: float, now: float, cost: float, rate: float, burst: float) -> tuple[float, float]:
    """(the cell's new arrival time, 0) when ``cost`` fits, else (``tat`` unchanged, seconds to wait). A cost
    larger than the whole bucket never fits: its wait is infinite."""
    interval = 1.0 / rate
    tolerance = burst * interval
    if cost > burst:
        return tat, float("inf")
    new_tat = max(tat, now) + cost * interval
    overshoot = new_tat - now - tolerance
    if overshoot <= 1e-9:
        return new_tat, 0.0
    return tat, overshoot


class Quotas(Protocol):
    def take(self, cell: str, cost: float, rate: float, burst: float) -> float: ...


class MemoryQuotas:
    """One process's cells (the app outside gunicorn, and unit tests)."""

    def __init__(self, clock=time.time):
        self.cells: dict[str, float] = {}
        self.clock = clock
        self.lock = threading.Lock()

    def take(self, cell: str, cost: float, rate: float, burst: float) -> float:
        with self.lock:
            tat, wait = admit(self.cells.get(cell, 0.0), self.clock(), cost, rate, burst)
            self.cells[cell] = tat
            return wait


class FileQuotas:
    """The cells of one replica's workers: an 8-byte file per cell in a folder they share, read and written
    under ``flock``, a few microseconds a take. The folder is made anew by each gunicorn master (in its metrics folder),
    so a restart starts every bucket full."""

    def __init__(self, folder: Path, clock=time.time):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.descriptors: dict[str, int] = {}
        self.lock = threading.Lock()

    def take(self, cell: str, cost: float, rate: float, burst: float) -> float:
        with self.lock:
            descriptor = self.descriptors.get(cell)
            if descriptor is None:
                descriptor = os.open(self.folder / cell, os.O_RDWR | os.O_CREAT, 0o600)
                self.descriptors[cell] = descriptor
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                stored = os.pread(descriptor, TAT.size, 0)
                tat = TAT.unpack(stored)[0] if len(stored) == TAT.size else 0.0
                new_tat, wait = admit(tat, self.clock(), cost, rate, burst)
                if new_tat != tat:
                    os.pwrite(descriptor, TAT.pack(new_tat), 0)
                return wait
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        with self.lock:
            for descriptor in self.descriptors.values():
                os.close(descriptor)
            self.descriptors.clear()
