"""Per-caller rate limits at the gateway: one token bucket per caller.

A caller is a token's subject, or the client's address for a request
without a valid token (so a flood of bad tokens is limited too). Each
bucket holds up to ``burst`` requests and refills at ``rate`` per second; a
request that finds it empty is answered 429 with ``Retry-After`` (whole
seconds until a request would pass). The address is the TCP peer's: behind a
proxy every client shares the proxy's bucket, as ``X-Forwarded-For`` is not
trusted (anyone can send it).

The buckets live in the gateway process: with several gateway replicas each
enforces its own limit. Memory is bounded: past ``max_callers`` buckets the
full ones (idle callers) are dropped, then the oldest.
"""

from __future__ import annotations

import math
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets by caller key; ``rate`` 0 lets everything through."""

    def __init__(self, rate: float, burst: int, *, max_callers: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_callers = max_callers
        #: key -> [tokens left, when last refilled (monotonic)]
        self.buckets: dict[str, list[float]] = {}
        self.limited = 0

    def wait(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0 if it may pass, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_callers:
                self._prune(now)
            bucket = self.buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        self.limited += 1
        return (1.0 - tokens) / self.rate

    def retry_after(self, wait: float) -> str:
        """``wait`` as a ``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (tokens, at) in self.buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self.buckets[k]
        excess = len(self.buckets) - self.max_callers // 2
        if excess > 0:
            for k in list(self.buckets)[:excess]:  # oldest first: dicts keep insertion order
                del self.buckets[k]
