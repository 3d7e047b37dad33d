"""A token bucket per key (a client id, a peer address), so one noisy client cannot flood the server.

Each key's bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a call spends
one token or is refused. Time is passed in (``time.monotonic()`` in the server, chosen numbers
in tests), so the limiter itself has no clock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class RateLimiter:
    """Per-key token buckets, safe to share between the server's threads, holding at most ``max_keys`` keys.

    When a new key would exceed ``max_keys``, the key seen longest ago is forgotten. A key idle
    for ``burst / rate_per_s`` seconds has a full bucket, the same as a new key, so forgetting
    it changes nothing; the limit loosens only if more than ``max_keys`` keys are busy at once.
    """

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(
                "rate limiter needs rate_per_s > 0, burst >= 1 and max_keys >= 1, "
                f"got {rate_per_s}, {burst}, {max_keys}"
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time of last call)

    def allow(self, key: str, now: float) -> bool:
        """Spend one of ``key``'s tokens at time ``now`` (seconds); False when its bucket is empty."""
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            now = max(now, last)  # a clock that steps back refills nothing
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed
