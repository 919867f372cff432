"""An in-process CA: signs workload leaves with a root it creates, or with Istio's ``cacerts`` intermediate.

Folder layouts accepted by ``LocalCA.open``:
- empty or missing: a self-signed root is created (``root-cert.pem``, ``ca-key.pem`` mode 0600);
- ``root-cert.pem`` + ``ca-key.pem``: sign with that root;
- Istio's cacerts (``ca-cert.pem``, ``ca-key.pem``, ``cert-chain.pem``, ``root-cert.pem``): sign with the
  intermediate ``ca-cert.pem``; the chain sent to workloads is ``cert-chain.pem`` without its root.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.certificates import certificate_pem, certificates_pem, is_self_signed, load_bundle
from bridge.errors import BackendUnavailable
from bridge.leaf_der import LeafTemplate, Signer, der_to_pem
from bridge.pem_files import write_private, write_public
from bridge.signing import (
    ServingMaterial,
    SignedChain,
    SigningRequest,
    new_private_key,
    new_serving_key,
    serving_material,
)
from clocks import Clock, SystemClock

ROOT_FILE, KEY_FILE, CA_CERT_FILE, CHAIN_FILE = "root-cert.pem", "ca-key.pem", "ca-cert.pem", "cert-chain.pem"
ROOT_LIFETIME = timedelta(days=3650)
BACKDATE = timedelta(minutes=2)  # clock-skew grace, as istiod gives its leaves


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
Usages = tuple[x509.ObjectIdentifier, ...]
WORKLOAD_EKU: Usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
SERVING_EKU: Usages = (ExtendedKeyUsageOID.SERVER_AUTH,)


def _leaf_template(
    issuer: x509.Name, authority_key_id: x509.AuthorityKeyIdentifier, eku: Usages
) -> x509.CertificateBuilder:
    """Everything a leaf shares with every other leaf, built once (builders are immutable)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .add_extension(authority_key_id, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    )


@dataclass(frozen=True)
class _Material:
    signer_certificate: x509.Certificate
    signer_key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...]  # intermediates sent after the leaf, signer first
    roots: tuple[x509.Certificate, ...]


class LocalCA:
    """Signs in-process. Everything per-request that can be computed once is computed in ``__init__``."""

    def __init__(self, material: _Material, directory: Path, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self.directory = directory
        self._key = material.signer_key
        self._issuer = material.signer_certificate.subject
        self._not_after = material.signer_certificate.not_valid_after_utc
        large_ec = isinstance(self._key, ec.EllipticCurvePrivateKey) and self._key.key_size >= 384
        self._hash = hashes.SHA384() if large_ec else hashes.SHA256()
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        self._templates: dict[Usages, LeafTemplate] = {
            eku: self._prepare(_leaf_template(self._issuer, authority_key_id, eku))
            for eku in (WORKLOAD_EKU, SERVING_EKU)
        }
        self._sign_tbs = _tbs_signer(self._key, self._hash)
        self._chain_pems = tuple(certificate_pem(c) for c in material.chain)
        self._roots_pem = certificates_pem(material.roots)
        self.roots = material.roots

    @classmethod
    def open(cls, directory: str | Path, *, key_type: str = "ecdsa", clock: Clock | None = None) -> LocalCA:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        present = {p.name for p in path.iterdir() if not p.name.startswith(".")}
        if CA_CERT_FILE in present:
            material = _load_cacerts(path)
        elif {ROOT_FILE, KEY_FILE} <= present:
            material = _load_root(path)
        elif not present & {ROOT_FILE, KEY_FILE, CA_CERT_FILE, CHAIN_FILE}:
            material = _create_root(path, key_type)
        else:
            raise ValueError(
                f"{path}: incomplete CA folder ({', '.join(sorted(present))}); expected nothing, "
                f"{ROOT_FILE}+{KEY_FILE}, or Istio's cacerts layout"
            )
        return cls(material, path, clock)

    @property
    def ready(self) -> bool:
        return True

    @property
    def ca_not_after(self) -> datetime:
        return self._not_after

    @property
    def roots_pem(self) -> str:
        return self._roots_pem

    def _prepare(self, builder: x509.CertificateBuilder) -> LeafTemplate:
        """The fixed DER of the leaves ``builder`` describes, taken from one leaf the builder signs now."""
        now = datetime.now(UTC)
        probe = (
            builder.public_key(self._key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("probe.invalid")]), critical=True)
            .sign(self._key, self._hash)
        )
        return LeafTemplate.from_probe(probe)

    def _build(
        self,
        public_key: CertificatePublicKeyTypes,
        uris: tuple[str, ...],
        dns_names: tuple[str, ...],
        eku: Usages,
        not_after: datetime,
    ) -> tuple[x509.Certificate, str]:
        now = self._clock.now()
        if now >= self._not_after:
            raise BackendUnavailable("CA_EXPIRED", f"the local CA expired at {self._not_after.isoformat()}")
        template = self._templates[eku]
        tbs = template.tbs_certificate(
            serial_number=secrets.randbits(159) | 1,
            not_before=now - BACKDATE,
            not_after=min(not_after, self._not_after),
            public_key=public_key,
            # the subject is empty, so the template marks the SAN critical (RFC 5280)
            uris=uris,
            dns_names=dns_names,
        )
        der = template.certificate(tbs, self._sign_tbs)
        return x509.load_der_x509_certificate(der), der_to_pem(der)

    def sign_now(self, request: SigningRequest) -> SignedChain:
        leaf, leaf_pem = self._build(
            request.public_key, request.uris, request.dns_names, WORKLOAD_EKU, request.not_after
        )
        return SignedChain(
            leaf=leaf,
            chain_pems=(leaf_pem, *self._chain_pems),
            roots_pem=self._roots_pem,
            built_in_process=True,
        )

    async def sign(self, request: SigningRequest) -> SignedChain:
        # A few hundred microseconds of CPU: a thread hop would cost more than it saves.
        return self.sign_now(request)

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        key = await new_serving_key(key_algorithm, key_size)
        leaf, _ = self._build(
            key.public_key(), (), dns_names, SERVING_EKU, self._clock.now() + timedelta(seconds=duration_seconds)
        )
        return serving_material(key, leaf, self._chain_pems)


def _tbs_signer(key: CertificateIssuerPrivateKeyTypes, hash_algorithm: hashes.HashAlgorithm) -> Signer:
    """The signature the builder would make: ECDSA, or RSA PKCS#1 v1.5, over the given hash."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hash_algorithm)
        return lambda tbs: key.sign(tbs, ecdsa)
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1 = padding.PKCS1v15()
        return lambda tbs: key.sign(tbs, pkcs1, hash_algorithm)
    raise ValueError("the CA key must be ECDSA or RSA")


def _load_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: CA key must be ECDSA or RSA")
    return key


def _check_signer(certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes, where: Path) -> None:
    if certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError(f"{where}: {KEY_FILE} does not belong to the signing certificate")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError(f"{where}: the signing certificate has no basicConstraints CA:TRUE") from None
    if not constraints.ca:
        raise ValueError(f"{where}: the signing certificate is not a CA")


def _load_root(path: Path) -> _Material:
    roots = tuple(load_bundle((path / ROOT_FILE).read_bytes(), what=str(path / ROOT_FILE)))
    key = _load_key(path / KEY_FILE)
    _check_signer(roots[0], key, path)
    return _Material(signer_certificate=roots[0], signer_key=key, chain=(), roots=roots)


def _load_cacerts(path: Path) -> _Material:
    missing = [n for n in (CA_CERT_FILE, KEY_FILE, ROOT_FILE) if not (path / n).exists()]
    if missing:
        raise ValueError(f"{path}: Istio cacerts layout is missing {', '.join(missing)}")
    signer = load_bundle((path / CA_CERT_FILE).read_bytes(), what=str(path / CA_CERT_FILE))[0]
    key = _load_key(path / KEY_FILE)
    _check_signer(signer, key, path)
    roots = tuple(load_bundle((path / ROOT_FILE).read_bytes(), what=str(path / ROOT_FILE)))
    chain_file = path / CHAIN_FILE
    listed = load_bundle(chain_file.read_bytes(), what=str(chain_file)) if chain_file.exists() else [signer]
    chain = [c for c in listed if not is_self_signed(c)]
    if not chain or chain[0] != signer:
        chain = [signer, *(c for c in chain if c != signer)]
    return _Material(signer_certificate=signer, signer_key=key, chain=tuple(chain), roots=roots)


def _create_root(path: Path, key_type: str) -> _Material:
    key = new_private_key("ECDSA", 256) if key_type == "ecdsa" else new_private_key("RSA", 3072)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshsigner"),
            x509.NameAttribute(NameOID.COMMON_NAME, "meshsigner local root CA"),
        ]
    )
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        path / KEY_FILE,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_public(path / ROOT_FILE, certificate_pem(root).encode("ascii"))
    return _Material(signer_certificate=root, signer_key=key, chain=(), roots=(root,))
