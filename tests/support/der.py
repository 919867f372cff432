"""A small DER writer of our own for hostile test inputs, independent of the product's reader.

Tests build CSRs byte by byte with it (two values in one RDN, a second extensionRequest attribute, explicit EC
parameters ...) so a regression test never trusts the code it checks. Signing uses ``cryptography`` keys only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
BOOLEAN = 0x01

OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
OID_SAN = "2.5.29.17"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_ORGANIZATION = "2.5.4.10"
OID_COMMON_NAME = "2.5.4.3"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_P256 = "1.2.840.10045.3.1.7"
OID_P384 = "1.3.132.0.34"
OID_PRIME_FIELD = "1.2.840.10045.1.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
OID_RSA_SHA256 = "1.2.840.113549.1.1.11"
OID_ED25519 = "1.3.101.112"


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + length(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(SET, b"".join(items))


def integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(INTEGER, body)


def oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(OID, bytes(out))


def null() -> bytes:
    return b"\x05\x00"


def boolean(value: bool) -> bytes:
    return tlv(BOOLEAN, b"\xff" if value else b"\x00")


def bit_string(data: bytes) -> bytes:
    return tlv(BIT_STRING, b"\x00" + data)


def octet_string(data: bytes) -> bytes:
    return tlv(OCTET_STRING, data)


def context(number: int, content: bytes, *, constructed: bool) -> bytes:
    return tlv((0xA0 if constructed else 0x80) | number, content)


# --- X.509 / PKCS#10 pieces -------------------------------------------------------------------------------------


def attribute_type_and_value(type_oid: str, value: str, string_tag: int = UTF8_STRING) -> bytes:
    return seq(oid(type_oid), tlv(string_tag, value.encode()))


def name(*rdns: Sequence[bytes]) -> bytes:
    """Each RDN is a list of encoded AttributeTypeAndValue; more than one makes a multi-valued RDN."""
    return seq(*(set_of(*rdn) for rdn in rdns))


def extension(ext_oid: str, value: bytes, *, critical: bool = False) -> bytes:
    parts = [oid(ext_oid)]
    if critical:
        parts.append(boolean(True))
    parts.append(octet_string(value))
    return seq(*parts)


def san(*general_names: bytes) -> bytes:
    return seq(*general_names)


def uri_name(uri: str) -> bytes:
    return context(6, uri.encode(), constructed=False)


def basic_constraints(ca: bool) -> bytes:
    return seq(boolean(True)) if ca else seq()


def attribute(attr_oid: str, *values: bytes) -> bytes:
    return seq(oid(attr_oid), set_of(*values))


def extension_request(*extensions: bytes) -> bytes:
    return attribute(OID_EXTENSION_REQUEST, seq(*extensions))


def spki_der(private_key: object) -> bytes:
    public_key = private_key.public_key()  # type: ignore[attr-defined]
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def explicit_p256_spki(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The P-256 key with its curve given as explicit SpecifiedECDomain parameters instead of the named OID."""
    point = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    a = p - 3
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    gx = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
    gy = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    generator = b"\x04" + gx.to_bytes(32, "big") + gy.to_bytes(32, "big")
    parameters = seq(
        integer(1),
        seq(oid(OID_PRIME_FIELD), integer(p)),
        seq(octet_string(a.to_bytes(32, "big")), octet_string(b.to_bytes(32, "big"))),
        octet_string(generator),
        integer(n),
        integer(1),
    )
    return seq(seq(oid(OID_EC_PUBLIC_KEY), parameters), bit_string(point))


@dataclass
class CsrParts:
    """A CertificationRequest assembled from raw pieces; ``der()`` signs it with ``private_key``."""

    private_key: object
    subject: bytes = field(default_factory=lambda: name([attribute_type_and_value(OID_ORGANIZATION, "")]))
    spki: bytes | None = None
    attributes: Iterable[bytes] = ()
    version: int = 0

    def info(self) -> bytes:
        spki = self.spki if self.spki is not None else spki_der(self.private_key)
        return seq(
            integer(self.version),
            self.subject,
            spki,
            context(0, b"".join(self.attributes), constructed=True),
        )

    def der(self) -> bytes:
        info = self.info()
        signer = self.private_key
        if isinstance(signer, ec.EllipticCurvePrivateKey):
            signature = signer.sign(info, ec.ECDSA(hashes.SHA256()))
            algorithm = seq(oid(OID_ECDSA_SHA256))
        elif isinstance(signer, rsa.RSAPrivateKey):
            from cryptography.hazmat.primitives.asymmetric import padding

            signature = signer.sign(info, padding.PKCS1v15(), hashes.SHA256())
            algorithm = seq(oid(OID_RSA_SHA256), null())
        elif isinstance(signer, ed25519.Ed25519PrivateKey):
            signature = signer.sign(info)
            algorithm = seq(oid(OID_ED25519))
        else:
            raise TypeError(f"unsupported key {type(signer).__name__}")
        return seq(info, algorithm, bit_string(signature))

    def pem(self) -> str:
        return to_pem(self.der())


def to_pem(der: bytes) -> str:
    import base64

    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"


def istio_csr(private_key: object, uri: str, *, extra_extensions: Iterable[bytes] = ()) -> CsrParts:
    """A pilot-agent shaped CSR: subject ``O=``, one critical URI SAN."""
    return CsrParts(
        private_key,
        attributes=[extension_request(extension(OID_SAN, san(uri_name(uri)), critical=True), *extra_extensions)],
    )
