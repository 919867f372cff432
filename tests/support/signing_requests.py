"""The signing backends' input (a checked workload CSR) built for tests that drive a backend directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509

from bridge.signing import SigningRequest
from tests.support.csr_builder import make_csr

WORKLOAD_ID = "spiffe://cluster.local/ns/app/sa/web"


def signing_request(uri: str = WORKLOAD_ID, *, lifetime: timedelta = timedelta(hours=1)) -> SigningRequest:
    """A request for one SPIFFE ID, as the front door hands it to a backend after its checks."""
    pem = make_csr([uri])
    csr = x509.load_pem_x509_csr(pem.encode())
    return SigningRequest(
        csr_pem=pem,
        csr=csr,
        public_key=csr.public_key(),
        uris=(uri,),
        dns_names=(),
        not_after=datetime.now(UTC) + lifetime,
        duration_seconds=int(lifetime.total_seconds()),
    )
