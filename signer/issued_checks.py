"""Every backend answer is untrusted: the leaf must be exactly what the decision allowed before it is returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bridge.errors import IssuerFailed
from policies import Decision

NOT_AFTER_TOLERANCE = timedelta(seconds=5)  # issuers round to whole seconds


def check_issued(leaf: x509.Certificate, public_key: CertificatePublicKeyTypes, decision: Decision) -> None:
    """Raises IssuerFailed (FAILED_PRECONDITION) when the issued leaf differs from what was decided.

    The leaf is the issuer's bytes: whatever the library raises while reading them (a SAN kind it does not model,
    a duplicate extension, a malformed value) is the issuer's fault, so FAILED_PRECONDITION too, never INTERNAL.
    """
    try:
        leaf_key = leaf.public_key()
        extensions = list(leaf.extensions)
        not_after = leaf.not_valid_after_utc
    except Exception as exc:  # library read of issuer-supplied bytes; nothing of ours runs inside
        raise IssuerFailed("ISSUED_MALFORMED", f"{type(exc).__name__}: {exc}") from None
    if leaf_key != public_key:
        raise IssuerFailed("ISSUED_KEY_MISMATCH", "the issued certificate is not for the CSR's key")
    sans = [e.value for e in extensions if isinstance(e.value, x509.SubjectAlternativeName)]
    if not sans:
        raise IssuerFailed("ISSUED_SAN_MISMATCH", "the issued certificate has no SAN")
    san = sans[0]
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    dns_names = san.get_values_for_type(x509.DNSName)
    if (
        sorted(uris) != sorted(decision.uris)
        or sorted(dns_names) != sorted(decision.dns_names)
        or len(uris) + len(dns_names) != len(list(san))
    ):
        raise IssuerFailed("ISSUED_SAN_MISMATCH", f"issued SANs {uris + dns_names} differ from the decision")
    if any(isinstance(e.value, x509.BasicConstraints) and e.value.ca for e in extensions):
        raise IssuerFailed("ISSUED_CA", "the issuer returned a CA certificate")
    check_lifetime(not_after, decision, now=datetime.now(UTC))


def check_lifetime(not_after: datetime | x509.Certificate, decision: Decision, *, now: datetime) -> None:
    """The leaf may not live longer than decided, counted from when it arrives (an issuer may take a while, so the
    decision's own notAfter is too early a yardstick), nor past the CA's notAfter when the decision was capped."""
    if decision.duration_seconds is None:
        return
    latest = now + timedelta(seconds=decision.duration_seconds) + NOT_AFTER_TOLERANCE
    if "NOT_AFTER_CAPPED_BY_CA" in decision.flags and decision.not_after is not None:
        latest = min(latest, decision.not_after + NOT_AFTER_TOLERANCE)
    if isinstance(not_after, x509.Certificate):
        not_after = not_after.not_valid_after_utc
    if not_after > latest:
        raise IssuerFailed(
            "ISSUED_TOO_LONG", f"notAfter {not_after.isoformat()} is past the allowed {latest.isoformat()}"
        )
