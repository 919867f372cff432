"""The authenticator ``serve`` hands to the service: the per-peer refusal limit, then the offline pre-screen, then
the configured authenticator (TokenReview, pinned JWKS, the cluster's JWKS).

The pre-screen runs before any work the authenticator would spend on a token; an authenticator that remembers the
tokens it verified (all three do: :class:`signer.auth.prescreen.ScreensOnMiss`) looks those up first and screens
only the others. A token it already verified costs a digest and a lookup; a new one is parsed once and, with the
cluster's keys, signature-checked once.

Every AuthenticationFailed on the way (pre-screen or authenticator) is charged to the caller's peer address; a peer
that has used up its failures is refused with RESOURCE_EXHAUSTED before any of its tokens is looked at.
"""

from __future__ import annotations

from signer.auth.base import Authenticator, WorkloadIdentity
from signer.auth.prescreen import ScreensOnMiss, TokenPrescreen
from signer.auth.refusal_limit import PeerRefusalLimiter, current_peer
from signer.errors import AuthenticationFailed


class ScreenedAuthenticator:
    def __init__(
        self,
        inner: Authenticator,
        *,
        prescreen: TokenPrescreen | None,
        limiter: PeerRefusalLimiter | None,
    ) -> None:
        self.inner = inner
        # decided once: a runtime Protocol check costs tens of microseconds, and the authenticator does not change
        self._screens_on_miss = inner if isinstance(inner, ScreensOnMiss) else None
        self._prescreen = prescreen
        self._limiter = limiter

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def reason(self) -> str:
        return str(getattr(self.inner, "reason", ""))

    async def authenticate(self, token: str) -> WorkloadIdentity:
        peer = current_peer()
        if self._limiter is not None:
            self._limiter.admit(peer)
        try:
            if self._prescreen is None:
                return await self.inner.authenticate(token)
            if self._screens_on_miss is not None:  # a token it already verified is not screened again
                return await self._screens_on_miss.authenticate_screened(token, self._prescreen.screen)
            await self._prescreen.screen(token)
            return await self.inner.authenticate(token)
        except AuthenticationFailed:
            if self._limiter is not None:
                self._limiter.failed(peer)
            raise
