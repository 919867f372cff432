"""client-go's flow control for every API request: ``--kube-api-qps``/``--kube-api-burst``, split into budgets.

One bucket would let a flood of TokenReviews (one per unknown token) take every request slot and delay the writes
that issue certificates. So the limit is shared out: TokenReviews and OIDC discovery reads draw on the ``review``
budget (``--kube-api-token-review-share`` of the QPS and burst), everything else (CertificateRequests, CSRs,
approvals, lists) on the ``default`` budget, the rest. Neither can borrow from the other.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from clocks import Clock


class Budget(StrEnum):
    DEFAULT = "default"  # the signing path's writes, lists, reads
    REVIEW = "review"  # TokenReviews and the issuer's OIDC discovery


class TokenBucket:
    """``qps`` tokens a second, up to ``burst`` saved; waiters queue in order."""

    def __init__(self, qps: float, burst: int, clock: Clock) -> None:
        self._rate = qps
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._refilled_at = clock.monotonic()
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

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


def split_budgets(qps: float, burst: int, review_share: float, clock: Clock) -> dict[Budget, TokenBucket]:
    """One bucket per budget: ``review_share`` (0 < share < 1) of the QPS and burst for reviews, the rest for the
    default budget; each gets at least 1 request of burst."""
    if not 0 < review_share < 1:
        raise ValueError("the token-review share must be between 0 and 1 (exclusive)")
    review_burst = max(1, round(burst * review_share))
    return {
        Budget.REVIEW: TokenBucket(qps * review_share, review_burst, clock),
        Budget.DEFAULT: TokenBucket(qps * (1 - review_share), max(1, burst - review_burst), clock),
    }
