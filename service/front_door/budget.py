"""The bytes of requests one worker holds in memory at once, over all its connections (MAX_BUFFERED_BYTES).

Every connection could otherwise claim a whole upload's worth; past the budget a request is refused with a 503
and ``Retry-After`` (docs/operations.md#limits).
"""

from __future__ import annotations


class BufferBudget:
    """Bytes of requests (headers and bodies) a worker holds in memory at once, across all its connections.

    A connection charges what it receives and returns it when its request is over; a charge that would take the
    worker past ``limit_bytes`` is refused, so that request gets a 503 and the memory stays bounded however many
    clients send at once.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.held = 0

    def charge(self, size: int) -> bool:
        if self.held + size > self.limit_bytes:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held = max(0, self.held - size)
