"""An issuer's leaf the library cannot fully read is the issuer's failure (FAILED_PRECONDITION), not INTERNAL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.errors import IssuerFailed
from policies import Decision, Outcome, Verdict
from signer.issued_checks import check_issued

OWN = "spiffe://cluster.local/ns/orders/sa/web"
PLACEHOLDER = "placeholder.example"
KEY = ec.generate_private_key(ec.SECP256R1())


def _leaf_der() -> bytes:
    now = datetime.now(UTC)
    sans = [x509.UniformResourceIdentifier(OWN), x509.DNSName(PLACEHOLDER)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca")]))
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _with_san_entry_retagged(tag: int) -> x509.Certificate:
    """The DNS entry's tag byte swapped in place (same length): the signature no longer matters here, the
    re-check reads the leaf's fields, and the chain is verified elsewhere."""
    der = _leaf_der()
    entry = bytes([0x82, len(PLACEHOLDER)]) + PLACEHOLDER.encode()
    assert der.count(entry) == 1
    return x509.load_der_x509_certificate(der.replace(entry, bytes([tag, len(PLACEHOLDER)]) + PLACEHOLDER.encode()))


def _decision() -> Decision:
    now = datetime.now(UTC)
    return Decision(
        verdict=Verdict.ALLOW,
        outcome=Outcome.OK,
        reason="GRANTED",
        uris=(OWN,),
        dns_names=(PLACEHOLDER,),
        duration_seconds=3600,
        not_after=now + timedelta(hours=1),
    )


def test_the_unmodified_leaf_passes():
    check_issued(x509.load_der_x509_certificate(_leaf_der()), KEY.public_key(), _decision())


@pytest.mark.parametrize("tag", [0xA3, 0xA5, 0x30], ids=["x400Address", "ediPartyName", "not a GeneralName"])
def test_unreadable_san_entry_is_issuer_failure(tag):
    with pytest.raises(IssuerFailed) as failed:
        check_issued(_with_san_entry_retagged(tag), KEY.public_key(), _decision())
    assert failed.value.reason == "ISSUED_MALFORMED"
