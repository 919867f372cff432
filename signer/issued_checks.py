"""Every backend answer is untrusted: the leaf must be exactly what the decision allowed before it is returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bridge.errors import IssuerFailed
from bridge.issued_identity import check_issued_identity
from policies import Decision

NOT_AFTER_TOLERANCE = timedelta(seconds=5)  # issuers round to whole seconds


def check_issued(leaf: x509.Certificate, public_key: CertificatePublicKeyTypes, decision: Decision) -> None:
    """Raises IssuerFailed (FAILED_PRECONDITION) when the issued leaf differs from what was decided: its key, its
    SANs, a CA (bridge.issued_identity), or a lifetime longer than decided."""
    check_issued_identity(leaf, public_key, decision.uris, decision.dns_names)
    try:
        not_after = leaf.not_valid_after_utc
    except Exception as exc:  # library read of issuer-supplied bytes; nothing of ours runs inside
        raise IssuerFailed("ISSUED_MALFORMED", f"{type(exc).__name__}: {exc}") from None
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
