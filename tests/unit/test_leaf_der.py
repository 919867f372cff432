"""The local CA's template-encoded leaves are exactly what x509.CertificateBuilder would have made."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.certificates import verify_issued_chain
from bridge.leaf_der import LeafTemplate, der_to_pem
from bridge.local_ca import LocalCA
from bridge.signing import SigningRequest
from tests.support.chain_builder import key_usage
from tests.support.csr_builder import make_csr

SPIFFE = "spiffe://cluster.local/ns/orders/sa/web"
LEAF_KEY_USAGE = key_usage(cert_sign=False)  # the test's own, not bridge/local_ca.py's constant


def _new_key(kind: str):
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _root(key, name: str = "test root") -> x509.Certificate:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshsigner"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _ca_folder(tmp_path, ca_key) -> x509.Certificate:
    root = _root(ca_key)
    (tmp_path / "root-cert.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca-key.pem").write_bytes(
        ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return root


def _builder_leaf(issued: x509.Certificate, signer: x509.Certificate, ca_key, sans, eku) -> x509.Certificate:
    """The same leaf as ``issued`` (same serial, validity and key), made by CertificateBuilder."""
    large_ec = isinstance(ca_key, ec.EllipticCurvePrivateKey) and ca_key.key_size >= 384
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.subject)
        .public_key(issued.public_key())
        .serial_number(issued.serial_number)
        .not_valid_before(issued.not_valid_before_utc)
        .not_valid_after(issued.not_valid_after_utc)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(ca_key, hashes.SHA384() if large_ec else hashes.SHA256())
    )


def _assert_same_fields(got: x509.Certificate, expected: x509.Certificate) -> None:
    assert got.tbs_certificate_bytes == expected.tbs_certificate_bytes
    assert got.version == expected.version == x509.Version.v3
    assert got.serial_number == expected.serial_number
    assert got.issuer == expected.issuer
    assert got.subject == expected.subject == x509.Name([])
    assert got.not_valid_before_utc == expected.not_valid_before_utc
    assert got.not_valid_after_utc == expected.not_valid_after_utc
    assert got.signature_algorithm_oid == expected.signature_algorithm_oid
    assert got.public_key() == expected.public_key()
    assert list(got.extensions) == list(expected.extensions)


@pytest.mark.parametrize("ca_kind", ["ec256", "ec384", "rsa"])
@pytest.mark.parametrize("leaf_kind", ["ec256", "rsa"])
def test_workload_leaf_matches_the_builder_and_verifies(tmp_path, ca_kind, leaf_kind):
    ca_key = _new_key(ca_kind)
    root = _ca_folder(tmp_path, ca_key)
    ca = LocalCA.open(tmp_path)
    csr_pem = make_csr([SPIFFE], private_key=_new_key(leaf_kind))
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = datetime.now(UTC)
    signed = ca.sign_now(
        SigningRequest(
            csr_pem=csr_pem,
            csr=csr,
            public_key=csr.public_key(),
            uris=(SPIFFE,),
            dns_names=("web.orders.svc",),
            not_after=now + timedelta(hours=1),
            duration_seconds=3600,
        )
    )
    leaf = signed.leaf
    assert signed.chain_pems[0] == leaf.public_bytes(serialization.Encoding.PEM).decode("ascii")
    expected = _builder_leaf(
        leaf,
        root,
        ca_key,
        [x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("web.orders.svc")],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    _assert_same_fields(leaf, expected)
    assert leaf.public_key() == csr.public_key()
    assert now - timedelta(minutes=3) <= leaf.not_valid_before_utc <= now
    leaf.verify_directly_issued_by(root)  # the signature over the TBSCertificate
    path = verify_issued_chain(leaf, [], [root], now=now)
    assert path == [leaf, root]


def test_serving_leaf_carries_server_auth_only(tmp_path):
    ca_key = _new_key("ec256")
    root = _ca_folder(tmp_path, ca_key)
    ca = LocalCA.open(tmp_path)
    material = asyncio.run(ca.issue_serving_certificate(("meshsigner.istio-system.svc",), 3600, "ECDSA", 256))
    leaf = x509.load_pem_x509_certificate(material.chain_pem)
    expected = _builder_leaf(
        leaf, root, ca_key, [x509.DNSName("meshsigner.istio-system.svc")], [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    _assert_same_fields(leaf, expected)
    leaf.verify_directly_issued_by(root)


def _template(ca_key, issuer: x509.Certificate) -> LeafTemplate:
    now = datetime.now(UTC)
    probe = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("probe.invalid")]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return LeafTemplate.from_probe(probe)


@pytest.mark.parametrize(
    ("serial", "not_after"),
    [
        (1, datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),  # the last UTCTime second
        (0x80, datetime(2050, 1, 1, tzinfo=UTC)),  # a serial needing a leading zero; GeneralizedTime from 2050
        ((1 << 158) | 1, datetime(2051, 6, 1, 12, 30, 15, 999_999, tzinfo=UTC)),  # microseconds dropped
    ],
)
def test_edges_of_the_encoding_match_the_builder(serial, not_after):
    ca_key = _new_key("ec256")
    issuer = _root(ca_key)
    leaf_key = _new_key("ec256")
    # 60 names: the SAN's length takes two octets, the whole TBSCertificate too
    dns_names = [f"host-{i}.a-rather-long-service-name.example-namespace.svc.cluster.local" for i in range(60)]
    not_before = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    template = _template(ca_key, issuer)
    tbs = template.tbs_certificate(
        serial_number=serial,
        not_before=not_before,
        not_after=not_after,
        public_key=leaf_key.public_key(),
        uris=(SPIFFE,),
        dns_names=dns_names,
    )
    der = template.certificate(tbs, lambda data: ca_key.sign(data, ec.ECDSA(hashes.SHA256())))
    got = x509.load_der_x509_certificate(der)
    expected = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(leaf_key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(SPIFFE), *(x509.DNSName(d) for d in dns_names)]
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _assert_same_fields(got, expected)
    got.verify_directly_issued_by(issuer)
    assert der_to_pem(der) == got.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_refuses_what_the_builder_refuses():
    ca_key = _new_key("ec256")
    template = _template(ca_key, _root(ca_key))
    fields = {
        "serial_number": 5,
        "not_before": datetime(2026, 1, 1, tzinfo=UTC),
        "not_after": datetime(2026, 1, 2, tzinfo=UTC),
        "public_key": ca_key.public_key(),
        "uris": (SPIFFE,),
        "dns_names": (),
    }
    with pytest.raises(ValueError, match="ASCII"):
        template.tbs_certificate(**{**fields, "dns_names": ("bücher.example",)})
    with pytest.raises(ValueError, match="notAfter"):
        template.tbs_certificate(**{**fields, "not_after": datetime(2025, 1, 1, tzinfo=UTC)})
    with pytest.raises(ValueError, match="positive"):
        template.tbs_certificate(**{**fields, "serial_number": 0})


def test_a_probe_without_a_trailing_san_is_refused():
    key = _new_key("ec256")
    now = datetime.now(UTC)
    probe = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ValueError, match="subjectAltName"):
        LeafTemplate.from_probe(probe)
