"""The offline pre-screen every token passes before any authenticator spends work (a TokenReview) on it.

A forged token must cost less than a real one. Checked locally, in this order, each refusal counted by reason in
``meshsigner_token_prescreen_refusals_total{reason}``:

1. a compact JWS of bounded size whose ``alg`` is accepted (RS256, ES256);
2. ``iss`` equals the cluster's service-account issuer (``--token-issuer``, or learnt from the API server's OIDC
   discovery); while neither is known, not checked;
3. ``aud`` includes an accepted audience (``--token-audiences``);
4. ``exp`` (required), ``nbf`` and ``iat`` against the injected clock, with 30 s of leeway;
5. when the cluster's key set is known, the key named by ``kid`` verifies the signature. An unknown ``kid`` asks
   the key source for a refresh (the source rate-limits them), so a flood of invented key ids costs at most one
   discovery read per interval.

Only what passes reaches the authenticator, which still decides binding and revocation (TokenReview, or the
informers in offline mode). Verdicts are not cached here; an authenticator that already verified a token (and
still caches it) skips the screen for it (:class:`signer.auth.screened.ScreenedAuthenticator`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter

from clocks import Clock
from signer.auth.base import WorkloadIdentity
from signer.auth.jws import PublicKey, UnverifiedToken, read_token, select_key, verify_signed
from signer.errors import AuthenticationFailed


class IssuerKeys(Protocol):
    """The cluster's service-account issuer and key set as far as known (None: not known yet)."""

    @property
    def issuer(self) -> str | None: ...

    @property
    def keys(self) -> dict[str, PublicKey] | None: ...

    @property
    def generation(self) -> int:
        """Changes whenever the key set changes."""
        ...

    async def refresh_for_unknown_kid(self) -> bool:
        """Re-read the key set unless one was read too recently; True when the set changed."""
        ...


async def verify_with_issuer_keys(token: UnverifiedToken, source: IssuerKeys, keys: dict[str, PublicKey]) -> None:
    """:func:`verify_signed` with ``keys`` (the source's current set), re-read once (rate-limited by the source)
    when the token names a key not in it."""
    if select_key(keys, token) is None and await source.refresh_for_unknown_kid():
        keys = source.keys or {}
    verify_signed(token, keys)


@dataclass(frozen=True, slots=True)
class ScreenedToken:
    """A token that passed the pre-screen: its parsed parts, and the key source one of whose keys verified its
    signature (None: the signature was not checked, no keys known)."""

    parsed: UnverifiedToken
    signed_by: IssuerKeys | None

    @property
    def claims(self) -> dict[str, Any]:
        return self.parsed.claims


Screen = Callable[[str], Awaitable[ScreenedToken]]  # raises AuthenticationFailed to refuse


@runtime_checkable
class ScreensOnMiss(Protocol):
    """An authenticator that remembers the tokens it verified and screens only the others."""

    async def authenticate_screened(self, token: str, screen: Screen) -> WorkloadIdentity:
        """``authenticate``, with ``screen(token)`` run before anything beyond a lookup of the tokens this
        authenticator already verified (and still trusts): a remembered token is not screened again. The screen's
        result may spare work (the parse, a signature the same key source verified), never a check."""
        ...


class PrescreenMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refusals = Counter(
            "meshsigner_token_prescreen_refusals_total",
            "Tokens refused by the offline pre-screen before any TokenReview, by reason",
            ["reason"],
            registry=registry,
        )
        self.passed = Counter(
            "meshsigner_token_prescreen_passed_total",
            "Tokens that passed the offline pre-screen (and went on to the authenticator)",
            registry=registry,
        )


class TokenPrescreen:
    def __init__(
        self,
        *,
        audiences: tuple[str, ...],
        clock: Clock,
        metrics: PrescreenMetrics,
        issuer: str = "",
        keys: IssuerKeys | None = None,
    ) -> None:
        if not audiences:
            raise ValueError("at least one token audience is required")
        self._audiences = audiences
        self._clock = clock
        self._metrics = metrics
        self._issuer = issuer
        self._keys = keys

    @property
    def issuer(self) -> str | None:
        """The issuer tokens must carry: the configured one, else the discovered one, else None (unchecked)."""
        if self._issuer:
            return self._issuer
        return self._keys.issuer if self._keys is not None else None

    async def screen(self, token: str) -> ScreenedToken:
        """The parsed token when it may be worth an authenticator's time; AuthenticationFailed otherwise."""
        try:
            parsed = await self._screen(token)
        except AuthenticationFailed as refused:
            self._metrics.refusals.labels(refused.reason).inc()
            raise
        self._metrics.passed.inc()
        return parsed

    async def _screen(self, token: str) -> ScreenedToken:
        parsed = read_token(token, issuer=self.issuer, audiences=self._audiences, clock=self._clock)
        keys = self._keys.keys if self._keys is not None else None
        if self._keys is None or keys is None:
            return ScreenedToken(parsed, None)
        await verify_with_issuer_keys(parsed, self._keys, keys)
        return ScreenedToken(parsed, self._keys)
