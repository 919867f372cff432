"""``--authenticator jwks`` inside a cluster (no ``--jwks-file``): offline verification with the cluster's own keys,
and the token's binding checked against meshsigner's informers, with no API call per request.

The signature, issuer, audience and times are checked against the keys and issuer read from the API server's OIDC
discovery (:mod:`signer.auth.cluster_keys`, refreshed on an unknown ``kid``). A verified token's identity is cached
by digest until the token expires, or until the key set changes (a removed key stops authenticating at once).
What an offline check cannot see, deletions, is then read from the informers on every request, as a TokenReview
would decide it:

=====================================  ====================  ======================================================
situation                              code                  why
=====================================  ====================  ======================================================
keys or issuer not read yet            UNAVAILABLE           nothing can be verified yet
service accounts / pods not listed yet UNAVAILABLE           never allow, never deny on an empty cache
token has no service-account UID       UNAUTHENTICATED       not a bound token: deletion could not be detected
service account absent or other UID    UNAUTHENTICATED       deleted (or deleted and recreated) since the token
pod absent, other UID, other account   UNAUTHENTICATED       the token's pod is gone (or finished: the pod list
                                                             holds scheduled, non-terminal pods)
=====================================  ====================  ======================================================
"""

from __future__ import annotations

from typing import Protocol

from bridge.pods import PodInfo
from clocks import Clock
from signer.auth.base import WorkloadIdentity
from signer.auth.jwks import identity_from_claims
from signer.auth.jws import LEEWAY_SECONDS, check_claims, read_token
from signer.auth.prescreen import IssuerKeys, Screen, ScreenedToken, verify_with_issuer_keys
from signer.auth.token_cache import TokenCache, token_digest
from signer.errors import AuthenticationFailed, TemporarilyUnavailable

CACHE_ENTRIES = 20_000


class ServiceAccountDirectory(Protocol):
    @property
    def synced(self) -> bool: ...

    def uid(self, namespace: str, name: str) -> str | None: ...


class PodDirectory(Protocol):
    @property
    def synced(self) -> bool: ...

    def pod(self, namespace: str, name: str) -> PodInfo | None: ...


class ClusterJwksAuthenticator:
    def __init__(
        self,
        keys: IssuerKeys,
        *,
        service_accounts: ServiceAccountDirectory,
        pods: PodDirectory,
        audiences: tuple[str, ...],
        clock: Clock,
    ) -> None:
        if not audiences:
            raise ValueError("at least one token audience is required")
        self._keys = keys
        self._service_accounts = service_accounts
        self._pods = pods
        self._audiences = audiences
        self._clock = clock
        self._verified = TokenCache(clock=clock, max_entries=CACHE_ENTRIES)
        self._generation = keys.generation

    @property
    def ready(self) -> bool:
        return self._keys.keys is not None and self._keys.issuer is not None

    @property
    def reason(self) -> str:
        return "" if self.ready else "the cluster's service-account keys have not been read yet"

    async def authenticate(self, token: str) -> WorkloadIdentity:
        return await self._authenticate(token, None)

    async def authenticate_screened(self, token: str, screen: Screen) -> WorkloadIdentity:
        return await self._authenticate(token, screen)

    async def _authenticate(self, token: str, screen: Screen | None) -> WorkloadIdentity:
        if self._keys.generation != self._generation:
            self._verified.clear()  # a removed key must stop authenticating at once
            self._generation = self._keys.generation
        digest = token_digest(token)
        identity = self._verified.get(digest)
        if identity is None:
            identity, expires = await self._verify(token, await screen(token) if screen is not None else None)
            self._verified.put(digest, identity, expires + LEEWAY_SECONDS)
        self._check_binding(identity)
        return identity

    async def _verify(self, token: str, screened: ScreenedToken | None) -> tuple[WorkloadIdentity, float]:
        """Claims and signature against the cluster's issuer and keys. The screen's parse is reused, and its
        signature check when it was made with a key of this same key source (the pre-screen in JWKS mode)."""
        keys, issuer = self._keys.keys, self._keys.issuer
        if keys is None or issuer is None:
            raise TemporarilyUnavailable("JWKS_UNAVAILABLE", "the cluster's keys have not been read yet")
        if screened is None:
            parsed = read_token(token, issuer=issuer, audiences=self._audiences, clock=self._clock)
        else:
            parsed = check_claims(screened.parsed, issuer=issuer, audiences=self._audiences, clock=self._clock)
        if screened is None or screened.signed_by is not self._keys:
            await verify_with_issuer_keys(parsed, self._keys, keys)
        return identity_from_claims(parsed.claims), float(parsed.claims["exp"])

    def _check_binding(self, identity: WorkloadIdentity) -> None:
        if not self._service_accounts.synced:
            raise TemporarilyUnavailable("SERVICE_ACCOUNTS_NOT_SYNCED", "service account list not received yet")
        if not identity.service_account_uid:
            raise AuthenticationFailed("TOKEN_NOT_BOUND", "token carries no service-account UID")
        uid = self._service_accounts.uid(identity.namespace, identity.service_account)
        if uid != identity.service_account_uid:
            raise AuthenticationFailed(
                "TOKEN_SERVICE_ACCOUNT_GONE", f"service account {identity.principal} no longer exists with that UID"
            )
        if identity.pod_name is None and identity.pod_uid is None:
            return
        if not self._pods.synced:
            raise TemporarilyUnavailable("PODS_NOT_SYNCED", "pod list not received yet")
        pod = self._pods.pod(identity.namespace, identity.pod_name or "")
        if pod is None or pod.uid != identity.pod_uid or pod.service_account != identity.service_account:
            raise AuthenticationFailed(
                "TOKEN_POD_GONE", f"pod {identity.namespace}/{identity.pod_name} no longer runs with that UID"
            )
