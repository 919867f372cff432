"""The one interface every signing backend (local CA, cert-manager, Kubernetes CSR API) implements, and the
serving-key helpers they share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bridge.certificates import certificate_pem
from bridge.errors import IssuerFailed

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class SigningRequest:
    """What to sign, decided already: the CSR (PEM, as received) and exactly the SANs and lifetime to issue, and
    the id of the decision (the front door's request id; the API objects a backend creates are annotated with it)."""

    csr_pem: str
    csr: x509.CertificateSigningRequest
    public_key: CertificatePublicKeyTypes
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    not_after: datetime
    duration_seconds: int
    identities_annotation: str = ""  # istio-csr's istio.cert-manager.io/identities value
    decision_id: str = ""


@dataclass(frozen=True, slots=True)
class SignedChain:
    """Leaf first, then intermediates (one certificate each, PEM), and the root bundle PEM (one or more roots)."""

    leaf: x509.Certificate
    chain_pems: tuple[str, ...]
    roots_pem: str
    # True only when this process built the leaf from the decision itself (the local CA): nothing external
    # could have altered it, so the front door's re-check of issuer answers would be a check that cannot fail.
    built_in_process: bool = False
    # The CertificateRequest / CertificateSigningRequest the backend created for this request (the audit mirror
    # names it); empty when none was made (the local CA).
    object_name: str = ""


@dataclass(frozen=True, slots=True)
class ServingMaterial:
    """A serving certificate for the gRPC listener: PEM private key and PEM chain (leaf first)."""

    key_pem: bytes
    chain_pem: bytes
    not_before: datetime
    not_after: datetime


def new_private_key(algorithm: str, size: int) -> PrivateKey:
    """Blocking: an RSA key takes from tens of milliseconds to seconds. In async code use :func:`new_serving_key`."""
    if algorithm.upper() == "ECDSA":
        return ec.generate_private_key(ec.SECP384R1() if size == 384 else ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


async def new_serving_key(algorithm: str, size: int) -> PrivateKey:
    """A fresh serving key, generated in a worker thread so that the event loop keeps serving meanwhile."""
    return await asyncio.to_thread(new_private_key, algorithm, size)


def serving_csr_pem(key: PrivateKey, dns_names: Iterable[str]) -> bytes:
    """The serving certificate's CSR (PEM) for an issuer that signs by API object: no subject, the DNS names."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def issued_serving_material(
    key: PrivateKey, leaf: x509.Certificate, intermediates: Iterable[x509.Certificate]
) -> ServingMaterial:
    """The listener's material from an issuer's answer, which must be for the key sent (ISSUED_KEY_MISMATCH)."""
    if leaf.public_key() != key.public_key():
        raise IssuerFailed("ISSUED_KEY_MISMATCH", "the serving certificate is not for the key sent")
    return serving_material(key, leaf, (certificate_pem(c) for c in intermediates))


def issued_chain(
    leaf: x509.Certificate, intermediates: Iterable[x509.Certificate], roots_pem: str, object_name: str
) -> SignedChain:
    """A workload's answer from an issuer's verified leaf and intermediates, the root bundle (PEM), and the name
    of the API object that asked the issuer for it."""
    return SignedChain(
        leaf=leaf,
        chain_pems=(certificate_pem(leaf), *(certificate_pem(c) for c in intermediates)),
        roots_pem=roots_pem,
        object_name=object_name,
    )


def serving_material(key: PrivateKey, leaf: x509.Certificate, intermediate_pems: Iterable[str]) -> ServingMaterial:
    """The listener's material: the key (PKCS#8 PEM) and the chain, leaf first, then the intermediates (PEM)."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ServingMaterial(
        key_pem=key_pem,
        chain_pem=(certificate_pem(leaf) + "".join(intermediate_pems)).encode("ascii"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


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
