"""The front door's re-check of what an issuer returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.errors import IssuerFailed
from policies import Decision, Outcome, Verdict
from signer.issued_checks import check_issued, check_lifetime

OWN = "spiffe://cluster.local/ns/orders/sa/web"
CA_KEY = ec.generate_private_key(ec.SECP256R1())
WORKLOAD_KEY = ec.generate_private_key(ec.SECP256R1())


def _leaf(
    *, not_before: datetime, not_after: datetime, uris=(OWN,), dns=(), ca=False, key=WORKLOAD_KEY
) -> x509.Certificate:
    sans = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(CA_KEY, hashes.SHA256())
    )


def _decision(now: datetime, duration: int = 3600, flags: tuple[str, ...] = ()) -> Decision:
    return Decision(
        verdict=Verdict.ALLOW,
        outcome=Outcome.OK,
        reason="GRANTED",
        uris=(OWN,),
        duration_seconds=duration,
        not_after=now + timedelta(seconds=duration),
        flags=flags,
    )


def test_slow_issuance_with_the_decided_lifetime_passes():
    decided = datetime.now(UTC) - timedelta(seconds=20)  # the issuer took 20 s
    arrived = datetime.now(UTC)
    leaf = _leaf(not_before=arrived, not_after=arrived + timedelta(seconds=3600))
    check_issued(leaf, WORKLOAD_KEY.public_key(), _decision(decided))


def test_longer_than_decided_is_refused():
    now = datetime.now(UTC)
    leaf = _leaf(not_before=now, not_after=now + timedelta(hours=2))
    with pytest.raises(IssuerFailed, match="ISSUED_TOO_LONG"):
        check_lifetime(leaf, _decision(now), now=now)


def test_cap_by_the_ca_is_enforced():
    now = datetime.now(UTC)
    capped = Decision(
        verdict=Verdict.ALLOW,
        outcome=Outcome.OK,
        reason="GRANTED",
        uris=(OWN,),
        duration_seconds=600,
        not_after=now + timedelta(seconds=600),
        flags=("NOT_AFTER_CAPPED_BY_CA",),
    )
    leaf = _leaf(not_before=now, not_after=now + timedelta(seconds=900))
    with pytest.raises(IssuerFailed, match="ISSUED_TOO_LONG"):
        check_lifetime(leaf, capped, now=now + timedelta(seconds=300))


@pytest.mark.parametrize(
    ("leaf_args", "reason"),
    [
        ({"uris": ("spiffe://cluster.local/ns/orders/sa/admin",)}, "ISSUED_SAN_MISMATCH"),
        ({"uris": (OWN,), "dns": ("evil.example",)}, "ISSUED_SAN_MISMATCH"),
        ({"ca": True}, "ISSUED_CA"),
        ({"key": ec.generate_private_key(ec.SECP256R1())}, "ISSUED_KEY_MISMATCH"),
    ],
    ids=["other identity", "extra DNS name", "CA certificate", "other key"],
)
def test_leaf_that_differs_from_the_decision_is_refused(leaf_args, reason):
    now = datetime.now(UTC)
    leaf = _leaf(not_before=now, not_after=now + timedelta(seconds=3600), **leaf_args)
    with pytest.raises(IssuerFailed, match=reason):
        check_issued(leaf, WORKLOAD_KEY.public_key(), _decision(now))
