"""Offline verification of Kubernetes service-account JWTs against a pinned JWKS file.

Only asymmetric algorithms from a fixed list are accepted, the key is chosen by ``kid`` and must match the
algorithm's key type, ``iss`` must equal the configured issuer byte for byte, and ``aud`` must contain one of the
configured audiences. Verified tokens are cached by their SHA-256 (never the token itself) until they expire, so a
burst of renewals costs one signature check per token. The file is re-read when it changes; a bad new file keeps
the last good keys. Time (``exp``, ``nbf``, ``iat``, the cache, the file check interval) is the injected clock's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from loguru import logger

from clocks import Clock, sleep_unless_stopped
from signer.auth.base import WorkloadIdentity, parse_service_account_username
from signer.auth.jws import LEEWAY_SECONDS as LEEWAY_SECONDS  # re-exported: callers and tests read it here
from signer.auth.jws import PublicKey, check_claims, read_token, verify_signed
from signer.auth.prescreen import Screen, ScreenedToken
from signer.auth.token_cache import TokenCache, token_digest
from signer.errors import AuthenticationFailed, TemporarilyUnavailable

CACHE_ENTRIES = 20_000
WATCH_INTERVAL_SECONDS = 1.0


def load_jwks(data: bytes) -> dict[str, PublicKey]:
    """kid → public key. Raises ValueError for anything unusable (so the caller keeps its last good set)."""
    return jwks_keys(json.loads(data))


def jwks_keys(document: Any) -> dict[str, PublicKey]:
    """kid → public key of a parsed JWKS document; ValueError for anything unusable."""
    if not isinstance(document, dict) or not isinstance(document.get("keys", []), list):
        raise ValueError("a JWKS is an object with a list of keys")
    keys: dict[str, PublicKey] = {}
    for index, entry in enumerate(document.get("keys", [])):
        try:
            jwk = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise ValueError(f"keys[{index}]: {exc}") from None
        if not isinstance(jwk.key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"keys[{index}]: only RSA and EC public keys are accepted")
        keys[jwk.key_id or ""] = jwk.key
    if not keys:
        raise ValueError("the JWKS has no keys")
    return keys


class JwksAuthenticator:
    def __init__(self, jwks_file: str | Path, *, issuer: str, audiences: tuple[str, ...], clock: Clock) -> None:
        if not audiences:
            raise ValueError("at least one token audience is required")
        self._clock = clock
        self._path = Path(jwks_file)
        self._issuer = issuer
        self._audiences = audiences
        self._keys: dict[str, PublicKey] = {}
        self._stamp: tuple[int, int] | None = None
        self._rejected: tuple[tuple[int, int] | None, str] | None = None  # the bad file (or error) last reported
        self._cache = TokenCache(clock=clock, max_entries=CACHE_ENTRIES)
        self.reload()

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    def reload(self) -> bool:
        """Re-read the file if it changed. Returns True when a new key set became active."""
        stamp: tuple[int, int] | None = None
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp or (self._rejected is not None and stamp == self._rejected[0]):
                return False  # unchanged, or the same bad file already reported
            keys = load_jwks(self._path.read_bytes())
        except (OSError, ValueError) as exc:
            problem = (stamp, str(exc))
            if problem != self._rejected:  # once per bad file or error, not at every check
                self._rejected = problem
                logger.bind(event="jwks_reload_failed", path=str(self._path)).error(
                    "JWKS not loaded, keeping {} keys: {}", len(self._keys), exc
                )
            return False
        self._keys, self._stamp, self._rejected = keys, stamp, None
        self._cache.clear()  # a removed key must stop authenticating at once
        logger.bind(event="jwks_loaded", path=str(self._path), keys=len(keys)).info("JWKS loaded")
        return True

    async def watch(self, stop: asyncio.Event, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        """Check the file every ``interval`` seconds of the clock until ``stop``."""
        while not await sleep_unless_stopped(self._clock, stop, interval):
            self.reload()

    async def authenticate(self, token: str) -> WorkloadIdentity:
        return self.verify(token)

    async def authenticate_screened(self, token: str, screen: Screen) -> WorkloadIdentity:
        digest = _digest(token)
        identity = self._cache.get(digest)
        if identity is None:
            identity = self._verify_new(token, digest, await screen(token))
        return identity

    def verify(self, token: str) -> WorkloadIdentity:
        digest = _digest(token)
        return self._cache.get(digest) or self._verify_new(token, digest, None)

    def _verify_new(self, token: str, digest: bytes, screened: ScreenedToken | None) -> WorkloadIdentity:
        """Claims and signature against this file's issuer and keys (the screen's parse reused, never its verdict)."""
        if not self._keys:
            raise TemporarilyUnavailable("JWKS_UNAVAILABLE", "no verification keys loaded")
        parsed = (
            check_claims(screened.parsed, issuer=self._issuer, audiences=self._audiences, clock=self._clock)
            if screened is not None
            else read_token(token, issuer=self._issuer, audiences=self._audiences, clock=self._clock)
        )
        verify_signed(parsed, self._keys)
        identity = identity_from_claims(parsed.claims)
        self._cache.put(digest, identity, float(parsed.claims["exp"]) + LEEWAY_SECONDS)
        return identity


def _digest(token: str) -> bytes:
    if not token.isascii():  # a compact JWS is base64url and dots; anything else is not a token
        raise AuthenticationFailed("TOKEN_MALFORMED", "token is not ASCII")
    return token_digest(token)


def identity_from_claims(claims: dict[str, Any]) -> WorkloadIdentity:
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise AuthenticationFailed("NOT_SERVICE_ACCOUNT", "token has no sub claim")
    namespace, service_account = parse_service_account_username(subject)
    kube_claim = claims.get("kubernetes.io")
    pod_name = pod_uid = sa_uid = None
    if kube_claim is not None:
        kube = _claim_object(kube_claim, "kubernetes.io")
        sa_claim = _claim_object(kube.get("serviceaccount") or {}, "kubernetes.io.serviceaccount")
        if kube.get("namespace") != namespace or sa_claim.get("name") != service_account:
            raise AuthenticationFailed("TOKEN_CLAIMS_INCONSISTENT", "kubernetes.io claims disagree with sub")
        sa_uid = _optional_string(sa_claim, "uid")
        pod = _claim_object(kube.get("pod") or {}, "kubernetes.io.pod")
        pod_name, pod_uid = _optional_string(pod, "name"), _optional_string(pod, "uid")
    return WorkloadIdentity(namespace, service_account, pod_name, pod_uid, sa_uid)


def _claim_object(value: object, name: str) -> dict[str, Any]:
    """A nested claim that must be a JSON object; a signed token with anything else there is refused, not a crash."""
    if not isinstance(value, dict):
        raise AuthenticationFailed("TOKEN_CLAIMS_MALFORMED", f"claim {name} is not an object")
    return value


def _optional_string(claims: dict[str, Any], key: str) -> str | None:
    value = claims.get(key)
    if value is not None and not isinstance(value, str):
        raise AuthenticationFailed("TOKEN_CLAIMS_MALFORMED", f"claim {key} is not a string")
    return value
