"""Compact JWS tokens as the authenticators see them. Two steps, each in one place:

- :func:`read_token`: a bounded parse of the unverified parts, an accepted ``alg``, then ``iss``, ``aud`` and the
  time claims against the injected clock;
- :func:`verify_signed`: the key named by ``kid`` (fitting ``alg``) verifies the signature over the parsed parts.

Shared by the JWKS authenticators (pinned file, or the cluster's keys from OIDC discovery) and the offline
pre-screen that runs before any TokenReview. Everything raises :class:`AuthenticationFailed` with a short reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from clocks import Clock
from signer.auth.base import MAX_TOKEN_BYTES
from signer.errors import AuthenticationFailed

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
ALGORITHMS: dict[str, type[rsa.RSAPublicKey] | type[ec.EllipticCurvePublicKey]] = {
    "RS256": rsa.RSAPublicKey,
    "ES256": ec.EllipticCurvePublicKey,
}
LEEWAY_SECONDS = 30
MAX_HEADER_BYTES = 1024  # {"alg":"RS256","kid":"<43 chars>"} is about 70 bytes
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_CHECKS = {name: get_default_algorithms()[name] for name in ALGORITHMS}


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """The decoded parts of a compact JWS, nothing verified yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes  # ``header.payload`` as sent: what the signature covers
    signature: bytes

    @property
    def algorithm(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _base64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def segment_json(segment: str, what: str, limit: int = MAX_TOKEN_BYTES) -> dict[str, Any]:
    """One base64url JSON-object segment of at most ``limit`` decoded bytes; TOKEN_MALFORMED otherwise."""
    if len(segment) > limit * 4 // 3 + 4 or not _SEGMENT.fullmatch(segment):
        raise AuthenticationFailed("TOKEN_MALFORMED", f"the {what} is not bounded base64url")
    try:
        value = json.loads(_base64url(segment))
    except (binascii.Error, ValueError):
        raise AuthenticationFailed("TOKEN_MALFORMED", f"the {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise AuthenticationFailed("TOKEN_MALFORMED", f"the {what} is not a JSON object")
    return value


def parse_compact(token: str) -> UnverifiedToken:
    """Header and claims of ``header.payload.signature``, bounded in size, with an accepted ``alg``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationFailed("TOKEN_TOO_LARGE", f"{len(token)} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not _SEGMENT.fullmatch(parts[2]):
        raise AuthenticationFailed("TOKEN_MALFORMED", "not a compact JWS (header.payload.signature)")
    header = segment_json(parts[0], "header", MAX_HEADER_BYTES)
    claims = segment_json(parts[1], "payload")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise AuthenticationFailed("TOKEN_ALGORITHM", f"algorithm {algorithm!r:.20} not accepted")
    try:
        signature = _base64url(parts[2])
    except binascii.Error:
        raise AuthenticationFailed("TOKEN_MALFORMED", "the signature is not base64url") from None
    return UnverifiedToken(header, claims, f"{parts[0]}.{parts[1]}".encode(), signature)


def read_token(token: str, *, issuer: str | None, audiences: tuple[str, ...], clock: Clock) -> UnverifiedToken:
    """:func:`parse_compact`, then ``iss`` (unless ``issuer`` is None: not known), ``aud`` and the time claims
    against ``clock``; the signature is not checked yet (:func:`verify_signed`)."""
    return check_claims(parse_compact(token), issuer=issuer, audiences=audiences, clock=clock)


def check_claims(
    parsed: UnverifiedToken, *, issuer: str | None, audiences: tuple[str, ...], clock: Clock
) -> UnverifiedToken:
    """The claim checks of :func:`read_token` on a token already parsed."""
    if issuer is not None:
        check_issuer(parsed.claims, issuer)
    check_audience(parsed.claims, audiences)
    check_times(parsed.claims, clock.now().timestamp())
    return parsed


def check_issuer(claims: dict[str, Any], issuer: str) -> None:
    if claims.get("iss") != issuer:
        raise AuthenticationFailed("TOKEN_ISSUER", "token issuer not accepted")


def check_audience(claims: dict[str, Any], audiences: tuple[str, ...]) -> None:
    granted = claims.get("aud")
    names = [granted] if isinstance(granted, str) else granted if isinstance(granted, list) else []
    if not any(isinstance(name, str) and name in audiences for name in names):
        raise AuthenticationFailed("TOKEN_AUDIENCE", "token audience not accepted")


def select_key(keys: Mapping[str, PublicKey], token: UnverifiedToken) -> PublicKey | None:
    """The key named by ``kid`` (the only key when the token names none); None when unknown. Raises when the key
    does not fit the token's algorithm."""
    kid = token.kid
    key = keys.get(kid) if kid is not None else None
    if key is None and token.header.get("kid") is None and len(keys) == 1:
        key = next(iter(keys.values()))
    if key is None:
        return None
    if not isinstance(key, ALGORITHMS[token.algorithm]) or (
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1"
    ):
        raise AuthenticationFailed("TOKEN_KEY_MISMATCH", f"key {kid!r:.80} does not fit {token.algorithm}")
    return key


def verify_signed(token: UnverifiedToken, keys: Mapping[str, PublicKey]) -> None:
    """The key :func:`select_key` picks verifies the token's signature; TOKEN_UNKNOWN_KEY when there is none."""
    key = select_key(keys, token)
    if key is None:
        raise AuthenticationFailed("TOKEN_UNKNOWN_KEY", f"no key with kid {token.kid!r:.80}")
    if not _SIGNATURE_CHECKS[token.algorithm].verify(token.signing_input, key, token.signature):
        raise AuthenticationFailed("TOKEN_SIGNATURE", "token signature does not verify")


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AuthenticationFailed("TOKEN_INVALID", f"{name} claim must be a number")
    return float(value)


def check_times(claims: dict[str, Any], now: float) -> None:
    """exp (required), nbf and iat against ``now`` (Unix seconds), each with LEEWAY_SECONDS of clock skew allowed."""
    expires = _time_claim(claims, "exp")
    if expires is None or now >= expires + LEEWAY_SECONDS:
        raise AuthenticationFailed("TOKEN_EXPIRED", "token has expired")
    not_before = _time_claim(claims, "nbf")
    if not_before is not None and now < not_before - LEEWAY_SECONDS:
        raise AuthenticationFailed("TOKEN_NOT_YET_VALID", "token is not yet valid")
    issued_at = _time_claim(claims, "iat")
    if issued_at is not None and now < issued_at - LEEWAY_SECONDS:
        raise AuthenticationFailed("TOKEN_NOT_YET_VALID", "token was issued in the future")
