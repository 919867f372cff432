"""Builds workload CSRs from named modifiers, including every malformed shape the attack table lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

SigningHash = hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512
CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_KEY_CACHE: dict[str, CsrKey] = {}


def key(kind: str = "p256", *, fresh: bool = False) -> CsrKey:
    """Keys are slow to make (RSA); tests that do not care about uniqueness share one per kind."""
    if not fresh and kind in _KEY_CACHE:
        return _KEY_CACHE[kind]
    makers: dict[str, Callable[[], CsrKey]] = {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }
    made = makers[kind]()
    if not fresh:
        _KEY_CACHE[kind] = made
    return made


def make_csr(
    uris: Iterable[str] = (),
    *,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    emails: Iterable[str] = (),
    common_name: str | None = None,
    subject: x509.Name | None = None,
    key_kind: str = "p256",
    private_key: CsrKey | None = None,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    san_critical: bool = True,
    hash_algorithm: SigningHash | None = None,
) -> str:
    signer = private_key or key(key_kind)
    if subject is None:
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "")]
        if common_name is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        subject = x509.Name(attributes)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else (hash_algorithm or hashes.SHA256())
    return builder.sign(signer, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def with_bad_signature(pem: str) -> str:
    """Same request, last signature byte flipped: parses fine, does not verify."""
    csr = x509.load_pem_x509_csr(pem.encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)
