"""Large decodes one at a time per worker, so that other connections never wait for more than one of them.

A gevent worker serves every connection from one thread: a decode runs without yielding and holds up all the
others. Each image's decode is bounded (``service.inference.images``); past this gate's wait, the request is
refused with a 503 and ``Retry-After`` rather than queued without limit (docs/operations.md#limits).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from service.errors import ServiceBusy

# A decode whose work is more than this many pixels (about 10 ms of CPU; service.inference.images prices a decode's work)
# waits for the worker's one large-decode slot.
HEAVY_DECODE_PIXELS = 1_000_000
# How long a large decode waits for that slot before its request is refused with a 503.
DECODE_WAIT_SECONDS = 5.0


class DecodeGate:
    """Large decodes one at a time per worker, each followed by a turn for every other connection.

    Each image's decode is bounded (``service.inference.images``), so a connection with a request ready waits at most one
    large decode, whatever else is being sent. Under gevent the semaphore and ``time.sleep(0)`` are gevent's
    (gunicorn's worker patches them), so waiting here lets the other connections run.
    """

    def __init__(self, heavy_pixels: int = HEAVY_DECODE_PIXELS, wait_seconds: float = DECODE_WAIT_SECONDS):
        self.heavy_pixels = heavy_pixels
        self.wait_seconds = wait_seconds
        self._slot = threading.Semaphore(1)

    @contextlib.contextmanager
    def decoding(self, work: int) -> Iterator[None]:
        if work < self.heavy_pixels:
            yield
            return
        if not self._slot.acquire(timeout=self.wait_seconds):
            raise ServiceBusy(f"this worker has been decoding other large images for {self.wait_seconds:g} s; "
                              "retry shortly")
        try:
            yield
        finally:
            self._slot.release()
            time.sleep(0)  # every other ready connection runs before this request's next image
