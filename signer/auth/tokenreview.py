"""Authentication by the Kubernetes API: one TokenReview per token, cached briefly.

The review sends the configured audiences and requires, like istiod: no ``status.error``, ``authenticated``, one of
our audiences in ``status.audiences``, the ``system:serviceaccounts`` group and a four-part
``system:serviceaccount:<ns>:<sa>`` username. Pod name and UID come from the review's ``extra`` fields (bound
tokens only).

Successful reviews are cached by the SHA-256 of the token (never the token), for at most ``cache_seconds`` and never
past the token's own ``exp`` (read from the JWT payload, only to shorten the entry). Concurrent requests with the
same token share one review, run as its own task: a caller that is cancelled leaves it running for the others.
Rejections are remembered too, by digest, for ``negative_cache_seconds`` (10 s): a rejected token sent again costs
no review until then. A
review that cannot be made (API down, timeout, throttled, RBAC broken) is ``TemporarilyUnavailable`` (UNAVAILABLE),
never ``AuthenticationFailed``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from loguru import logger

from bridge.kube import KubeError
from clocks import Clock
from signer.auth.base import WorkloadIdentity, parse_service_account_username
from signer.auth.jws import segment_json
from signer.auth.prescreen import Screen
from signer.auth.token_cache import RejectedTokens, TokenCache, token_digest
from signer.errors import AuthenticationFailed, TemporarilyUnavailable
from signer.metrics import AuthMetrics

SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class TokenReviewer(Protocol):
    """What the authenticator needs from the Kubernetes seam."""

    async def review_token(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]: ...


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (used only to cap a cache entry); None when unreadable."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        exp = segment_json(parts[1], "payload").get("exp")
    except AuthenticationFailed:
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def identity_from_review(status: dict[str, Any], audiences: tuple[str, ...]) -> WorkloadIdentity:
    """Judge a TokenReview status; raises AuthenticationFailed with the reason."""
    if status.get("error"):
        raise AuthenticationFailed("TOKEN_REJECTED", f"token review error: {str(status['error'])[:200]}")
    if status.get("authenticated") is not True:
        raise AuthenticationFailed("TOKEN_REJECTED", "token not authenticated")
    granted = status.get("audiences") or []
    if not set(granted) & set(audiences):
        raise AuthenticationFailed("TOKEN_AUDIENCE", "token audience not accepted")
    user = status.get("user") or {}
    if SERVICE_ACCOUNTS_GROUP not in (user.get("groups") or []):
        raise AuthenticationFailed("NOT_SERVICE_ACCOUNT", "token subject is not in system:serviceaccounts")
    namespace, service_account = parse_service_account_username(str(user.get("username") or ""))
    extra = user.get("extra") or {}

    def first(key: str) -> str | None:
        values = extra.get(key) or []
        return str(values[0]) if values else None

    return WorkloadIdentity(
        namespace,
        service_account,
        pod_name=first(POD_NAME_EXTRA),
        pod_uid=first(POD_UID_EXTRA),
        service_account_uid=str(user["uid"]) if user.get("uid") else None,
    )


class TokenReviewAuthenticator:
    def __init__(
        self,
        reviewer: TokenReviewer,
        *,
        audiences: tuple[str, ...],
        metrics: AuthMetrics,
        clock: Clock,
        cache_seconds: float = 30.0,
        cache_entries: int = 10_000,
        negative_cache_seconds: float = 10.0,
    ) -> None:
        if not audiences:
            raise ValueError("at least one token audience is required (empty means the API server's own)")
        self._reviewer = reviewer
        self._audiences = audiences
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._cache = TokenCache(clock=clock, max_entries=cache_entries)
        self._rejected = RejectedTokens(clock=clock, seconds=negative_cache_seconds, max_entries=cache_entries)
        self._in_flight: dict[bytes, asyncio.Task[WorkloadIdentity]] = {}
        self.reachable = True  # last review reached the API server (for /readyz detail)

    @property
    def ready(self) -> bool:
        return True  # every call asks the API server; an outage answers UNAVAILABLE per request

    async def authenticate(self, token: str) -> WorkloadIdentity:
        return await self._authenticate(token, None)

    async def authenticate_screened(self, token: str, screen: Screen) -> WorkloadIdentity:
        return await self._authenticate(token, screen)

    async def _authenticate(self, token: str, screen: Screen | None) -> WorkloadIdentity:
        digest = token_digest(token)
        known = self._known(digest)
        if known is None and screen is not None:
            await screen(token)
            known = self._known(digest)  # another caller may have reviewed the token meanwhile
        if isinstance(known, WorkloadIdentity):
            return known
        if known is not None:
            review = known
            self._metrics.token_review_cache.labels("shared").inc()
        else:
            self._metrics.token_review_cache.labels("miss").inc()
            # Its own task: the caller that started it may be cancelled (client gone, deadline) without failing
            # the other callers waiting for the same token.
            review = asyncio.get_running_loop().create_task(self._review(token, digest), name="token-review")
            self._in_flight[digest] = review
            review.add_done_callback(lambda done: self._review_done(digest, done))
        return await asyncio.shield(review)

    def _known(self, digest: bytes) -> WorkloadIdentity | asyncio.Task[WorkloadIdentity] | None:
        """A cached identity, the review in flight for this token, or None; a recently rejected token raises."""
        identity = self._cache.get(digest)
        if identity is not None:
            self._metrics.token_review_cache.labels("hit").inc()
            return identity
        if digest in self._rejected:
            self._metrics.token_review_cache.labels("rejected_hit").inc()
            raise AuthenticationFailed("TOKEN_REJECTED", "rejected by a recent TokenReview")
        return self._in_flight.get(digest)

    def _review_done(self, digest: bytes, review: asyncio.Task[WorkloadIdentity]) -> None:
        if self._in_flight.get(digest) is review:
            del self._in_flight[digest]
        if not review.cancelled():
            review.exception()  # retrieved: every caller may have gone

    async def _review(self, token: str, digest: bytes) -> WorkloadIdentity:
        try:
            status = await self._reviewer.review_token(token, self._audiences)
        except KubeError as exc:
            self.reachable = False
            self._metrics.token_reviews.labels("unavailable").inc()
            logger.bind(event="token_review_unavailable").warning("TokenReview failed: {}", exc)
            raise TemporarilyUnavailable("TOKEN_REVIEW_UNAVAILABLE", str(exc)) from None
        self.reachable = True
        try:
            identity = identity_from_review(status, self._audiences)
        except AuthenticationFailed:
            self._metrics.token_reviews.labels("rejected").inc()
            self._rejected.add(digest)
            raise
        self._metrics.token_reviews.labels("authenticated").inc()
        expires = self._cache.now() + self._cache_seconds
        exp = token_expiry(token)
        if exp is not None:
            expires = min(expires, exp)
        self._cache.put(digest, identity, expires)  # not stored when already expired (cache off: 0 seconds)
        return identity
