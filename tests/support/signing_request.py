"""A decided SigningRequest for a workload CSR, as the front door would hand it to a backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509

from bridge.signing import SigningRequest
from tests.support.csr_builder import make_csr


def signing_request(
    uri: str = "spiffe://cluster.local/ns/app/sa/web",
    *,
    not_after: datetime | None = None,
    decision_id: str = "",
) -> SigningRequest:
    """A request to sign a fresh CSR for ``uri`` for 3600 s, until ``not_after`` (default: an hour from now), as
    decided by ``decision_id``."""
    pem = make_csr([uri])
    csr = x509.load_pem_x509_csr(pem.encode())
    return SigningRequest(
        csr_pem=pem,
        csr=csr,
        public_key=csr.public_key(),
        uris=(uri,),
        dns_names=(),
        not_after=not_after or datetime.now(UTC) + timedelta(hours=1),
        duration_seconds=3600,
        decision_id=decision_id,
    )
