"""Mesh CAs and workload client certificates built with cryptography, for the client-certificate tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.chain_builder import Authority, make_ca, make_leaf

CLIENT_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class MeshCA:
    """A CA (root, or intermediate below ``parent``) that signs workload leaves (built by chain_builder.py)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    parent: MeshCA | None = None

    @classmethod
    def root(cls, name: str = "test mesh root", *, now: datetime | None = None) -> MeshCA:
        not_before, not_after = _ca_validity(now)
        authority = make_ca(name, not_before=not_before, not_after=not_after)
        return cls(authority.certificate, authority.key)

    @classmethod
    def load(cls, directory: Path) -> MeshCA:
        """The local CA meshsigner created in ``directory`` (root-cert.pem, ca-key.pem)."""
        certificate = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(certificate, key)

    def intermediate(self, name: str = "test mesh intermediate", *, now: datetime | None = None) -> MeshCA:
        not_before, not_after = _ca_validity(now)
        authority = make_ca(name, Authority(self.certificate, self.key), not_before=not_before, not_after=not_after)
        return MeshCA(authority.certificate, authority.key, self)

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
        certificate = make_leaf(
            Authority(self.certificate, self.key),
            sans=[x509.UniformResourceIdentifier(uri) for uri in uris],
            usages=list(usages),
            not_before=start,
            not_after=start + lifetime,
            key=key,
        )
        return key, certificate


def _ca_validity(now: datetime | None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(days=365)
