"""Mesh CAs and workload client certificates built with cryptography, for the client-certificate tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class MeshCA:
    """A CA (root, or intermediate below ``parent``) that signs workload leaves."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    parent: MeshCA | None = None

    @classmethod
    def root(cls, name: str = "test mesh root", *, now: datetime | None = None) -> MeshCA:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(_ca_certificate(name, key, key, None, now or datetime.now(UTC)), key)

    @classmethod
    def load(cls, directory: Path) -> MeshCA:
        """The local CA meshsigner created in ``directory`` (root-cert.pem, ca-key.pem)."""
        certificate = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(certificate, key)

    def intermediate(self, name: str = "test mesh intermediate", *, now: datetime | None = None) -> MeshCA:
        key = ec.generate_private_key(ec.SECP256R1())
        return MeshCA(_ca_certificate(name, key, self.key, self.certificate, now or datetime.now(UTC)), key, self)

    @property
    def chain(self) -> list[x509.Certificate]:
        """This CA and its parents up to, not including, the root."""
        if self.parent is None:
            return []
        return [self.certificate, *self.parent.chain]

    def leaf(
        self,
        uris: tuple[str, ...] = ("spiffe://cluster.local/ns/orders/sa/web",),
        *,
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(hours=1),
        usages: tuple[x509.ObjectIdentifier, ...] = CLIENT_AUTH,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A workload leaf shaped like Istio's: empty subject, critical URI SANs, serverAuth + clientAuth."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=2)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        )
        if uris:
            names = [x509.UniformResourceIdentifier(uri) for uri in uris]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _ca_certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    signer_key: CertificateIssuerPrivateKeyTypes,
    signer: x509.Certificate | None,
    now: datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject if signer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    return builder.sign(signer_key, hashes.SHA256())
