"""The one interface every signing backend (local CA, cert-manager, Kubernetes CSR API) implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


@dataclass(frozen=True, slots=True)
class SigningRequest:
    """What to sign, decided already: the CSR (PEM, as received) and exactly the SANs and lifetime to issue."""

    csr_pem: str
    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    not_after: datetime
    duration_seconds: int
    identities_annotation: str = ""  # istio-csr's istio.cert-manager.io/identities value


@dataclass(frozen=True, slots=True)
class SignedChain:
    """Leaf first, then intermediates (one certificate each, PEM), and the root bundle PEM (one or more roots)."""

    leaf: x509.Certificate
    chain_pems: tuple[str, ...]
    roots_pem: str
    # True only when this process built the leaf from the decision itself (the local CA): nothing external
    # could have altered it, so the front door's re-check of issuer answers would be a check that cannot fail.
    built_in_process: bool = False


@dataclass(frozen=True, slots=True)
class ServingMaterial:
    """A serving certificate for the gRPC listener: PEM private key and PEM chain (leaf first)."""

    key_pem: bytes
    chain_pem: bytes
    not_before: datetime
    not_after: datetime


class SigningBackend(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def ca_not_after(self) -> datetime | None:
        """The signing CA's own notAfter when known, so decisions can cap lifetimes to it."""
        ...

    async def sign(self, request: SigningRequest) -> SignedChain: ...

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial: ...
