"""Compact JWS tokens as the authenticators see them: a bounded parse of the unverified parts, the key that may
verify them, the signature check, and the time claims against the injected clock.

Shared by the JWKS authenticators (pinned file, or the cluster's keys from OIDC discovery) and the offline
pre-screen that runs before any TokenReview. Everything raises :class:`AuthenticationFailed` with a short reason.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """The decoded header and claims of a compact JWS, nothing verified yet."""

    header: dict[str, Any]
    claims: dict[str, Any]

    @property
    def algorithm(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _segment_json(segment: str, what: str, limit: int) -> dict[str, Any]:
    if len(segment) > limit * 4 // 3 + 4 or not _SEGMENT.fullmatch(segment):
        raise AuthenticationFailed("TOKEN_MALFORMED", f"the {what} is not bounded base64url")
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
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
    header = _segment_json(parts[0], "header", MAX_HEADER_BYTES)
    claims = _segment_json(parts[1], "payload", MAX_TOKEN_BYTES)
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise AuthenticationFailed("TOKEN_ALGORITHM", f"algorithm {algorithm!r:.20} not accepted")
    return UnverifiedToken(header, claims)


def check_issuer(claims: dict[str, Any], issuer: str) -> None:
    if claims.get("iss") != issuer:
        raise AuthenticationFailed("TOKEN_ISSUER", "token issuer not accepted")


def check_audience(claims: dict[str, Any], audiences: tuple[str, ...]) -> None:
    granted = claims.get("aud")
    names = [granted] if isinstance(granted, str) else granted if isinstance(granted, list) else []
    if not any(isinstance(name, str) and name in audiences for name in names):
        raise AuthenticationFailed("TOKEN_AUDIENCE", "token audience not accepted")


def select_key(keys: dict[str, PublicKey], token: UnverifiedToken) -> PublicKey | None:
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


def verify_signature(token: str, key: PublicKey, algorithm: str) -> None:
    try:
        jwt.PyJWS().decode(token, key, algorithms=[algorithm])
    except jwt.PyJWTError:
        raise AuthenticationFailed("TOKEN_SIGNATURE", "token signature does not verify") from None


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
