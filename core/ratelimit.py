"""Per-client token buckets: the rate limits on writes and searches by photo.

Hand-written rather than the ``limits`` package: its in-memory storage starts a timer thread
after a hit and scans every client's counters on each expiry pass, work a request should not pay.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

BURST_SECONDS = 10.0
"""A full bucket holds this many seconds' worth of requests (at least one): a client may burst
that far ahead of its rate, then waits."""


class RateLimiter:
    """``per_minute`` requests a minute per client on average. At most ``max_clients`` buckets
    are held, the least recently seen dropped first (a forgotten client starts with a full
    bucket)."""

    def __init__(
        self, per_minute: float, *, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Spend one token of ``client``'s: 0.0 when the request may go ahead, else the seconds
        until it may (nothing is spent then)."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
