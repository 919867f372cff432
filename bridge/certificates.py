"""Certificates as every backend handles them: PEM in and out, bounded chain parsing, and the verification of a
chain received from outside (an issuer's answer) against the pinned roots.

Verification is cryptography's X.509 path validation (``cryptography.x509.verification``), not a hand-written
walk: validity periods of every certificate at the given time, signatures, basicConstraints and pathLenConstraint,
keyCertSign on every intermediate, CA:FALSE on the leaf, name constraints. Two policy changes from the Web PKI
defaults: a workload leaf names a SPIFFE ID in a URI SAN and may carry serverAuth and clientAuth together, so the
leaf's extended key usage must include serverAuth or clientAuth instead of exactly the one a browser or a TLS
client would ask for; and, as the hand-written check before, a pinned root without keyUsage and certificates
without authorityKeyIdentifier are accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from bridge.errors import BackendUnavailable, IssuerFailed

MAX_CHAIN_BYTES = 330 * 1024  # cert-manager's bound for status.certificate
MAX_CHAIN_CERTIFICATES = 10
TLS_USAGES = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})


# --- PEM -------------------------------------------------------------------------------------------------------
def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificates_pem(certificates: Iterable[x509.Certificate]) -> str:
    """One PEM bundle, in the order given."""
    return "".join(certificate_pem(c) for c in certificates)


def load_bundle(data: bytes, *, what: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle; raises ValueError if there are none or one does not parse."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what}: not a PEM certificate bundle ({exc})") from None
    if not certificates:
        raise ValueError(f"{what}: no certificate found")
    return certificates


# --- facts -----------------------------------------------------------------------------------------------------
def is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# --- chains from outside ---------------------------------------------------------------------------------------
def split_issued_chain(pem: bytes, *, what: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Leaf and intermediates of an issued PEM chain (bounded; self-signed roots dropped: trust comes from the
    pinned roots only). Raises IssuerFailed(BAD_CHAIN)."""
    if len(pem) > MAX_CHAIN_BYTES:
        raise IssuerFailed("BAD_CHAIN", f"{what} is {len(pem)} bytes")
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise IssuerFailed("BAD_CHAIN", f"{what} does not parse: {exc}") from None
    if not certificates or len(certificates) > MAX_CHAIN_CERTIFICATES:
        raise IssuerFailed("BAD_CHAIN", f"{what} holds {len(certificates)} certificates")
    leaf, rest = certificates[0], certificates[1:]
    return leaf, [c for c in rest if not is_self_signed(c)]


def _tls_usage(policy: Policy, certificate: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    """Leaf EKU, when present, must allow TLS (serverAuth or clientAuth; workload leaves carry both)."""
    if eku is not None and not TLS_USAGES.intersection(eku):
        raise ValueError("the leaf's extended key usage allows neither serverAuth nor clientAuth")


# authorityKeyIdentifier is a path-building hint, not a trust property; Go (cert-manager) leaves lack it when the
# issuing CA has no subjectKeyIdentifier, and the hand-written check never asked for it.
_LEAF_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _tls_usage)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
)


def _ca_policy(roots: Sequence[x509.Certificate]) -> ExtensionPolicy:
    """The Web PKI CA rules, except that a pinned root may lack keyUsage (``openssl req -x509`` makes such roots;
    the operator chose to trust it). Every intermediate must have keyUsage with keyCertSign."""
    pinned = set(roots)

    def cert_sign(policy: Policy, certificate: x509.Certificate, usage: x509.KeyUsage | None) -> None:
        if usage is None and certificate not in pinned:
            raise ValueError("an intermediate CA without keyUsage")
        if usage is not None and not usage.key_cert_sign:
            raise ValueError("a CA whose keyUsage lacks keyCertSign")

    return (
        ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, cert_sign)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )


def verify_issued_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> list[x509.Certificate]:
    """The verified path (leaf first, pinned root last) from ``leaf`` through ``intermediates`` (any order) to one
    of ``roots``, valid at ``now``. Raises BackendUnavailable(NO_ROOTS) without roots, IssuerFailed
    (CHAIN_NOT_TRUSTED) for anything the path validation refuses: expired or not-yet-valid certificates, a chain
    that does not reach a pinned root, a CA without keyCertSign or beyond its path length, a leaf with CA:TRUE."""
    if not roots:
        raise BackendUnavailable("NO_ROOTS", "no root bundle loaded")
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_CERTIFICATES)
        .extension_policies(ca_policy=_ca_policy(roots), ee_policy=_LEAF_POLICY)
        .build_client_verifier()
    )
    try:
        return verifier.verify(leaf, list(intermediates)).chain
    except VerificationError as exc:
        raise IssuerFailed(
            "CHAIN_NOT_TRUSTED",
            f"the chain of {leaf.subject.rfc4514_string() or 'the leaf'} (issuer {leaf.issuer.rfc4514_string()}) "
            f"does not verify against the pinned roots: {exc}",
        ) from None
