"""Identities of verified tokens, reused until the token (or the cache's own limit) expires.

Both authenticators (JWKS and TokenReview) keep one. Entries are keyed by the SHA-256 of the token, never the
token; an entry ends at a wall-clock time the authenticator chose (the token's ``exp`` at the latest), read from
the injected clock so that tests move time instead of waiting. Beyond ``max_entries`` the oldest entry goes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from clocks import Clock
from signer.auth.base import WorkloadIdentity


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenCache:
    def __init__(self, *, clock: Clock, max_entries: int) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[WorkloadIdentity, float]] = OrderedDict()

    def now(self) -> float:
        """The cache's time: Unix seconds of the injected clock (what a token's ``exp`` is compared with)."""
        return self._clock.now().timestamp()

    def get(self, digest: bytes) -> WorkloadIdentity | None:
        """The identity cached for this token digest, or None when absent or expired (then dropped)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        identity, expires_at = entry
        if self.now() >= expires_at:
            del self._entries[digest]
            return None
        return identity

    def put(self, digest: bytes, identity: WorkloadIdentity, expires_at: float) -> None:
        """Cache until ``expires_at`` (Unix seconds); an entry already expired is not stored."""
        if expires_at <= self.now():
            return
        self._entries[digest] = (identity, expires_at)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RejectedTokens:
    """Digests of tokens the authority (TokenReview) rejected, remembered for a short while so that a token sent
    again and again costs one review per ``seconds``, not one per request. Bounded: beyond ``max_entries`` the
    oldest goes. Short on purpose: a rejection is not forever (a token may be presented before its pod exists)."""

    def __init__(self, *, clock: Clock, seconds: float, max_entries: int) -> None:
        self._clock = clock
        self._seconds = seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, digest: bytes) -> bool:
        until = self._entries.get(digest)
        if until is None:
            return False
        if self._clock.monotonic() >= until:
            del self._entries[digest]
            return False
        return True

    def add(self, digest: bytes) -> None:
        if self._seconds <= 0:
            return
        self._entries[digest] = self._clock.monotonic() + self._seconds
        self._entries.move_to_end(digest)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
