"""Workload leaves encoded straight to DER from a prepared template, without ``x509.CertificateBuilder``.

Every leaf a CA signs shares its version, signature algorithm, issuer, empty subject and every extension except
the subjectAltName. Those bytes are taken once from a probe certificate that ``CertificateBuilder`` built with the
same fixed parts, so they are exactly what the builder would write. Per leaf only the serial number, validity,
subjectPublicKeyInfo and subjectAltName are encoded here; the TBSCertificate is then signed with the CA key and
wrapped. The builder spent most of a leaf's cost on re-encoding the fixed parts and validating them again.

tests/unit/test_leaf_der.py checks that the TBSCertificate is byte-for-byte what the builder writes for the same
inputs, that the signature and the chain verify, and the bench's Go client parses every leaf it is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING = 0x30, 0x02, 0x03, 0x04
_URI, _DNS_NAME = 0x86, 0x82  # GeneralName [6] uniformResourceIdentifier and [2] dNSName, IA5String
_EXTENSIONS = 0xA3  # [3] EXPLICIT
# Extension { extnID subjectAltName (2.5.29.17) = 06 03 55 1d 11, critical TRUE = 01 01 ff, extnValue OCTET STRING }
_SAN_HEAD = bytes.fromhex("0603551d110101ff")
_EMPTY_NAME = bytes.fromhex("3000")

Signer = Callable[[bytes], bytes]  # the CA's signature over the TBSCertificate bytes


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _elements(data: bytes) -> list[bytes]:
    """The complete TLVs (tag, length and value) one after another in ``data``; DER, so definite lengths only."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        first = data[at + 1]
        if first < 0x80:
            header, size = 2, first
        else:
            count = first & 0x7F
            header, size = 2 + count, int.from_bytes(data[at + 2 : at + 2 + count], "big")
        out.append(data[at : at + header + size])
        at += header + size
    if at != len(data):
        raise ValueError("truncated DER")
    return out


def _contents(element: bytes) -> bytes:
    first = element[1]
    return element[2 + (first & 0x7F if first >= 0x80 else 0) :]


def _time(when: datetime) -> bytes:
    utc = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, as the builder writes.
    # (f-strings: strftime costs several times as much)
    rest = f"{utc.month:02}{utc.day:02}{utc.hour:02}{utc.minute:02}{utc.second:02}Z"
    if 1950 <= utc.year < 2050:
        return b"\x17\x0d" + f"{utc.year % 100:02}{rest}".encode("ascii")
    return b"\x18\x0f" + f"{utc.year:04}{rest}".encode("ascii")


def _ia5(value: str, what: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} values must be ASCII (A-labels): {value!r}") from None


def _positive_integer(value: int) -> bytes:
    if value <= 0:
        raise ValueError("the serial number must be positive")
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


@dataclass(frozen=True, slots=True)
class LeafTemplate:
    """The fixed parts of a CA's leaves, DER-encoded once."""

    version: bytes  # [0] EXPLICIT INTEGER 2
    signature_algorithm: bytes  # AlgorithmIdentifier, in the TBSCertificate and again around the signature
    issuer: bytes  # Name
    fixed_extensions: bytes  # every Extension TLV that precedes the subjectAltName, concatenated

    @classmethod
    def from_probe(cls, probe: x509.Certificate) -> LeafTemplate:
        """Takes the fixed parts from a leaf the builder made with them; its last extension must be the SAN."""
        fields = _elements(_contents(probe.tbs_certificate_bytes))
        if len(fields) != 8 or fields[0][0] != 0xA0 or fields[7][0] != _EXTENSIONS or fields[5] != _EMPTY_NAME:
            raise ValueError("probe leaf is not v3 with an empty subject and extensions")
        extensions = _elements(_contents(_contents(fields[7])))
        if not extensions or not _contents(extensions[-1]).startswith(_SAN_HEAD):
            raise ValueError("the probe leaf's last extension must be a critical subjectAltName")
        return cls(
            version=fields[0],
            signature_algorithm=fields[2],
            issuer=fields[3],
            fixed_extensions=b"".join(extensions[:-1]),
        )

    def tbs_certificate(
        self,
        *,
        serial_number: int,
        not_before: datetime,
        not_after: datetime,
        public_key: CertificatePublicKeyTypes,
        uris: Sequence[str],
        dns_names: Sequence[str],
    ) -> bytes:
        if not_after < not_before:
            raise ValueError("notAfter must not be before notBefore")
        names = b"".join(_tlv(_URI, _ia5(u, "URI")) for u in uris)
        names += b"".join(_tlv(_DNS_NAME, _ia5(d, "DNS name")) for d in dns_names)
        san = _tlv(_SEQUENCE, _SAN_HEAD + _tlv(_OCTET_STRING, _tlv(_SEQUENCE, names)))
        return _tlv(
            _SEQUENCE,
            b"".join(
                (
                    self.version,
                    _positive_integer(serial_number),
                    self.signature_algorithm,
                    self.issuer,
                    _tlv(_SEQUENCE, _time(not_before) + _time(not_after)),
                    _EMPTY_NAME,
                    public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
                    _tlv(_EXTENSIONS, _tlv(_SEQUENCE, self.fixed_extensions + san)),
                )
            ),
        )

    def certificate(self, tbs_certificate: bytes, sign: Signer) -> bytes:
        """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }."""
        signature = _tlv(_BIT_STRING, b"\x00" + sign(tbs_certificate))
        return _tlv(_SEQUENCE, tbs_certificate + self.signature_algorithm + signature)


def der_to_pem(der: bytes) -> str:
    """PEM with 64-character lines, as OpenSSL and cryptography write it."""
    encoded = base64.b64encode(der).decode("ascii")
    lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"
