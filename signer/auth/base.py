"""What every authenticator returns, and the header rules that hold before any token is looked at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from signer.errors import AuthenticationFailed

MAX_TOKEN_BYTES = 8 * 1024  # projected service-account tokens are 1-2 KB
BEARER = "Bearer "
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    namespace: str
    service_account: str
    pod_name: str | None = None
    pod_uid: str | None = None
    service_account_uid: str | None = None

    @property
    def principal(self) -> str:
        return f"{self.namespace}/{self.service_account}"


class Authenticator(Protocol):
    """Turns a bearer token into a workload identity, or raises AuthenticationFailed /
    TemporarilyUnavailable (when the verifier itself cannot answer)."""

    @property
    def ready(self) -> bool: ...

    async def authenticate(self, token: str) -> WorkloadIdentity: ...


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """The token of exactly one ``authorization: Bearer <token>`` header; anything else is refused."""
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        raise AuthenticationFailed("NO_TOKEN", "no authorization header")
    if len(values) > 1:
        raise AuthenticationFailed("MULTIPLE_TOKENS", f"{len(values)} authorization headers")
    value = values[0]
    if not isinstance(value, str) or not value.startswith(BEARER):
        raise AuthenticationFailed("NOT_BEARER", "authorization header is not 'Bearer <token>'")
    token = value[len(BEARER) :]
    if not token or token.strip() != token:
        raise AuthenticationFailed("NO_TOKEN", "empty or padded bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationFailed("TOKEN_TOO_LARGE", f"{len(token)} bytes")
    return token


def check_cluster_id(metadata: Sequence[tuple[str, str | bytes]], cluster_id: str) -> None:
    """``clusterid`` may be absent or exactly one value equal to ours; decided before any token work."""
    values = [value for key, value in metadata if key == "clusterid"]
    if not values:
        return
    if len(values) > 1:
        raise AuthenticationFailed("CLUSTER_ID_MISMATCH", f"{len(values)} clusterid headers")
    if values[0] != cluster_id:
        raise AuthenticationFailed("CLUSTER_ID_MISMATCH", f"client claims to be in cluster {values[0]!r:.100}")


def parse_service_account_username(username: str) -> tuple[str, str]:
    """``system:serviceaccount:<ns>:<sa>`` → (ns, sa); anything else is not a service account."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        raise AuthenticationFailed("NOT_SERVICE_ACCOUNT", "token subject is not a service account")
    parts = username.split(":")
    if len(parts) != 4 or not parts[2] or not parts[3]:
        raise AuthenticationFailed("NOT_SERVICE_ACCOUNT", "malformed service-account username")
    return parts[2], parts[3]
