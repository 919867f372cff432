"""Certificate chains for tests, built with cryptography's builder (never with product code): CAs with or without
keyCertSign and path lengths, leaves with any SANs, usages and validity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPIFFE_ID = "spiffe://cluster.local/ns/app/sa/web"
WORKLOAD_EKU = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


CA_KEY_USAGE = key_usage(cert_sign=True)


def make_ca(
    name: str,
    parent: Authority | None = None,
    *,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None = CA_KEY_USAGE,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=365),
) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = parent.key if parent else key
    issuer_name = parent.certificate.subject if parent else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return Authority(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    parent: Authority,
    *,
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] = WORKLOAD_EKU,
    ca: bool = False,
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(hours=23),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A leaf shaped like Istio's (empty subject, critical SANs); ``sans`` None: the workload's SPIFFE ID, empty:
    no SAN extension; ``usages`` empty: no extended key usage."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(parent.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if sans is None:
        sans = [x509.UniformResourceIdentifier(SPIFFE_ID)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True).add_extension(
        key_usage(cert_sign=ca), critical=True
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
    )
    return builder.sign(parent.key, hashes.SHA256())
