"""How many feedback requests a worker accepts: a token bucket, so bursts pass and floods get a 429."""

from __future__ import annotations

import threading
import time


class RateLimit:
    """A token bucket: ``per_minute`` requests a minute, in bursts of up to that many; one per worker."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate
