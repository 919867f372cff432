"""An issuer's answer is untrusted: the leaf must be for the key sent, with exactly the SANs asked for, and not a
CA. One check for the workload path (signer/issued_checks.py adds the decided lifetime) and istiod's certificate."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bridge.errors import IssuerFailed


def check_issued_identity(
    leaf: x509.Certificate, public_key: CertificatePublicKeyTypes, uris: Iterable[str], dns_names: Iterable[str]
) -> None:
    """Raises IssuerFailed (FAILED_PRECONDITION) when the leaf is not for ``public_key``, names other SANs than
    ``uris`` and ``dns_names`` (or any SAN of another kind), or is a CA.

    The leaf is the issuer's bytes: whatever the library raises while reading them (a SAN kind it does not model,
    a duplicate extension, a malformed value) is the issuer's fault, so ISSUED_MALFORMED, never INTERNAL.
    """
    try:
        leaf_key = leaf.public_key()
        extensions = list(leaf.extensions)
    except Exception as exc:  # library read of issuer-supplied bytes; nothing of ours runs inside
        raise IssuerFailed("ISSUED_MALFORMED", f"{type(exc).__name__}: {exc}") from None
    if leaf_key != public_key:
        raise IssuerFailed("ISSUED_KEY_MISMATCH", "the issued certificate is not for the key sent")
    sans = [e.value for e in extensions if isinstance(e.value, x509.SubjectAlternativeName)]
    if not sans:
        raise IssuerFailed("ISSUED_SAN_MISMATCH", "the issued certificate has no SAN")
    san = sans[0]
    issued_uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    issued_dns = san.get_values_for_type(x509.DNSName)
    if (
        sorted(issued_uris) != sorted(uris)
        or sorted(issued_dns) != sorted(dns_names)
        or len(issued_uris) + len(issued_dns) != len(list(san))
    ):
        raise IssuerFailed("ISSUED_SAN_MISMATCH", f"issued SANs {issued_uris + issued_dns} differ from those asked")
    if any(isinstance(e.value, x509.BasicConstraints) and e.value.ca for e in extensions):
        raise IssuerFailed("ISSUED_CA", "the issuer returned a CA certificate")
