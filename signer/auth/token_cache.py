"""Identities of verified tokens, reused until the token (or the cache's own limit) expires; and the tokens
TokenReview rejected, for a few seconds. One bounded, expiring map of token digests serves both.

Every authenticator (JWKS and TokenReview) keeps a TokenCache. Entries are keyed by the SHA-256 of the token, never the
token; an entry ends at a wall-clock time the authenticator chose (the token's ``exp`` at the latest), read from
the injected clock so that tests move time instead of waiting. Beyond ``max_entries`` the oldest entry goes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from clocks import Clock
from signer.auth.base import WorkloadIdentity

Value = TypeVar("Value")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class _ExpiringDigests(Generic[Value]):
    """Token digest → value until a time of ``now`` (the oldest entry goes beyond ``max_entries``)."""

    def __init__(self, *, now: Callable[[], float], max_entries: int) -> None:
        self.now = now
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Value, float]] = OrderedDict()

    def get(self, digest: bytes) -> Value | None:
        """The value stored for this token digest, or None when absent or expired (then dropped)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        value, expires_at = entry
        if self.now() >= expires_at:
            del self._entries[digest]
            return None
        return value

    def put(self, digest: bytes, value: Value, expires_at: float) -> None:
        """Store until ``expires_at``; an entry already expired is not stored."""
        if expires_at <= self.now():
            return
        self._entries[digest] = (value, expires_at)
        self._entries.move_to_end(digest)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TokenCache(_ExpiringDigests[WorkloadIdentity]):
    """Identities of verified tokens until a wall-clock time (Unix seconds of the injected clock: what a token's
    ``exp`` is compared with)."""

    def __init__(self, *, clock: Clock, max_entries: int) -> None:
        super().__init__(now=lambda: clock.now().timestamp(), max_entries=max_entries)


class RejectedTokens(_ExpiringDigests[bool]):
    """Digests of tokens the authority (TokenReview) rejected, remembered for a short while so that a token sent
    again and again costs one review per ``seconds``, not one per request. Bounded: beyond ``max_entries`` the
    oldest goes. Short on purpose: a rejection is not forever (a token may be presented before its pod exists).
    Timed on the monotonic clock: a wall-clock step neither extends nor ends the window."""

    def __init__(self, *, clock: Clock, seconds: float, max_entries: int) -> None:
        super().__init__(now=clock.monotonic, max_entries=max_entries)
        self._seconds = seconds

    def __contains__(self, digest: bytes) -> bool:
        return self.get(digest) is not None

    def add(self, digest: bytes) -> None:
        self.put(digest, True, self.now() + self._seconds)  # not stored when seconds <= 0 (off)
