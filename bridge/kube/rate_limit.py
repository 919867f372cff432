"""client-go's flow control for every API request: ``--kube-api-qps``/``--kube-api-burst``."""

from __future__ import annotations

import asyncio

from clocks import Clock


class TokenBucket:
    """``qps`` tokens a second, up to ``burst`` saved; waiters queue in order."""

    def __init__(self, qps: float, burst: int, clock: Clock) -> None:
        self._rate = qps
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._refilled_at = clock.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now

    def delay(self) -> float:
        """Take one token; the seconds to wait before using it (0 when one was saved)."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        async with self._lock:
            wait = self.delay()
            if wait > 0:
                await self._clock.sleep(wait)
