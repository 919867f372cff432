"""Every backend answer is untrusted: the leaf must be exactly what the decision allowed before it is returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bridge.errors import IssuerFailed
from policies import Decision

NOT_AFTER_TOLERANCE = timedelta(seconds=5)  # issuers round to whole seconds


def check_issued(leaf: x509.Certificate, public_key: CertificatePublicKeyTypes, decision: Decision) -> None:
    """Raises IssuerFailed (FAILED_PRECONDITION) when the issued leaf differs from what was decided."""
    if leaf.public_key() != public_key:
        raise IssuerFailed("ISSUED_KEY_MISMATCH", "the issued certificate is not for the CSR's key")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IssuerFailed("ISSUED_SAN_MISMATCH", "the issued certificate has no SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    dns_names = san.get_values_for_type(x509.DNSName)
    if (
        sorted(uris) != sorted(decision.uris)
        or sorted(dns_names) != sorted(decision.dns_names)
        or len(uris) + len(dns_names) != len(list(san))
    ):
        raise IssuerFailed("ISSUED_SAN_MISMATCH", f"issued SANs {uris + dns_names} differ from the decision")
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise IssuerFailed("ISSUED_CA", "the issuer returned a CA certificate")
    except x509.ExtensionNotFound:
        pass
    check_lifetime(leaf, decision, now=datetime.now(UTC))


def check_lifetime(leaf: x509.Certificate, decision: Decision, *, now: datetime) -> None:
    """The leaf may not live longer than decided, counted from when it arrives (an issuer may take a while, so the
    decision's own notAfter is too early a yardstick), nor past the CA's notAfter when the decision was capped."""
    if decision.duration_seconds is None:
        return
    latest = now + timedelta(seconds=decision.duration_seconds) + NOT_AFTER_TOLERANCE
    if "NOT_AFTER_CAPPED_BY_CA" in decision.flags and decision.not_after is not None:
        latest = min(latest, decision.not_after + NOT_AFTER_TOLERANCE)
    if leaf.not_valid_after_utc > latest:
        raise IssuerFailed(
            "ISSUED_TOO_LONG",
            f"notAfter {leaf.not_valid_after_utc.isoformat()} is past the allowed {latest.isoformat()}",
        )
