"""parse_csr against whole classes of hostile DER (built with tests/support/der.py, not the product's reader).

Every refusal is a CsrRejected with a reason code: never another exception type (which the service would answer
INTERNAL), and never an acceptance the library's partial view would allow.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.csr_checks import ParsedCsr, parse_csr
from signer.errors import CsrRejected
from tests.support import der
from tests.support.csr_builder import key, make_csr

OWN = "spiffe://cluster.local/ns/orders/sa/web"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SAN = der.extension(der.OID_SAN, der.san(der.uri_name(OWN)), critical=True)
ORG = der.attribute_type_and_value(der.OID_ORGANIZATION, "")
CN = der.attribute_type_and_value(der.OID_COMMON_NAME, OWN)


def _parse(pem: str) -> ParsedCsr:
    return parse_csr(pem, validity_seconds=3600, impersonated=None, cert_signer=None)


def _reason(pem: str) -> str:
    with pytest.raises(CsrRejected) as refused:
        _parse(pem)
    return refused.value.reason


def _csr(**parts: Any) -> str:
    parts.setdefault("attributes", [der.extension_request(SAN)])
    return der.CsrParts(EC_KEY, **parts).pem()


def _with_san(*general_names: bytes) -> str:
    return _csr(attributes=[der.extension_request(der.extension(der.OID_SAN, der.san(*general_names)))])


def _ec_spki(parameters: bytes | None) -> bytes:
    point = EC_KEY.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    algorithm = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), *([parameters] if parameters is not None else []))
    return der.seq(algorithm, der.bit_string(point))


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("pilot-agent P-256", lambda: make_csr([OWN])),
        ("P-384", lambda: make_csr([OWN], key_kind="p384")),
        ("RSA-2048", lambda: make_csr([OWN], key_kind="rsa2048")),
        ("Ed25519", lambda: make_csr([OWN], key_kind="ed25519")),
        (
            "ztunnel: empty subject, SAN not critical",
            lambda: make_csr([OWN], subject=x509.Name([]), san_critical=False),
        ),
        ("own encoder", lambda: _csr()),
        ("own encoder, no attributes", lambda: _csr(attributes=[])),
    ],
)
def test_well_formed_csrs_pass(kind, make):
    parsed = _parse(make())
    assert parsed.request.uris in ((OWN,), ())


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        (der.name([ORG, ORG]), "SUBJECT_NOT_ALLOWED"),  # the attacker's sample: the same type twice in one RDN
        (der.name([der.attribute_type_and_value(der.OID_ORGANIZATION, "a"), ORG]), "SUBJECT_NOT_ALLOWED"),
        (der.name([ORG, CN]), "SUBJECT_NOT_ALLOWED"),  # any multi-valued RDN
        (der.name([]), "SUBJECT_NOT_ALLOWED"),  # an empty RDN set
        (der.name([der.seq(der.oid(der.OID_ORGANIZATION))]), "CSR_MALFORMED"),  # type without value
        (der.name([der.seq(der.oid(der.OID_ORGANIZATION), der.boolean(True))]), "CSR_MALFORMED"),  # not a string
    ],
    ids=["two O", "two different O", "O+CN", "empty RDN", "no value", "boolean value"],
)
def test_subject_shapes_are_refused(subject, reason):
    assert _reason(_csr(subject=subject)) == reason


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ([der.attribute(der.OID_EXTENSION_REQUEST, der.seq(SAN), der.seq(SAN))], "CSR_ATTRIBUTE_MALFORMED"),
        ([der.attribute(der.OID_EXTENSION_REQUEST)], "CSR_ATTRIBUTE_MALFORMED"),
        ([der.extension_request(SAN), der.extension_request(SAN)], "CSR_DUPLICATE_ATTRIBUTE"),
        (
            [
                der.extension_request(SAN),
                der.extension_request(der.extension(der.OID_BASIC_CONSTRAINTS, der.basic_constraints(True))),
            ],
            "CSR_DUPLICATE_ATTRIBUTE",
        ),
        ([der.attribute(der.OID_CHALLENGE_PASSWORD, der.tlv(der.UTF8_STRING, b"pw"))], "CSR_ATTRIBUTE_NOT_ALLOWED"),
        ([der.extension_request(SAN, SAN)], "CSR_DUPLICATE_EXTENSION"),
        ([der.extension_request(der.extension(der.OID_KEY_USAGE, der.tlv(der.BIT_STRING, b"")))], "CSR_MALFORMED"),
    ],
    ids=[
        "two values",
        "no value",
        "two extensionRequests",
        "second extensionRequest with CA:TRUE",
        "challengePassword",
        "same extension twice",
        "key usage the library cannot read",
    ],
)
def test_attribute_shapes_are_refused(attributes, reason):
    assert _reason(_csr(attributes=attributes)) == reason


@pytest.mark.parametrize(
    "general_name",
    [
        der.context(0, der.seq(der.oid("1.2.3.4"), der.context(0, der.null(), constructed=True)), constructed=True),
        der.context(3, der.seq(), constructed=True),
        der.context(4, der.name([ORG]), constructed=True),
        der.context(5, der.seq(der.context(1, der.tlv(der.UTF8_STRING, b"x"), constructed=True)), constructed=True),
        der.context(8, der.oid("1.2.3.4")[2:], constructed=False),
        der.tlv(der.IA5_STRING, b"not a general name"),
    ],
    ids=["otherName", "x400Address", "directoryName", "ediPartyName", "registeredID", "universal tag"],
)
def test_san_kinds_outside_the_model_are_refused(general_name):
    assert _reason(_with_san(der.uri_name(OWN), general_name)) == "SAN_TYPE_NOT_ALLOWED"


def test_a_constructed_uri_san_is_malformed():
    assert _reason(_with_san(der.context(6, der.tlv(der.IA5_STRING, OWN.encode()), constructed=True))) == (
        "CSR_MALFORMED"
    )


@pytest.mark.parametrize(
    "spki",
    [
        der.explicit_p256_spki(EC_KEY),
        _ec_spki(None),
        _ec_spki(der.null()),
        _ec_spki(der.oid("1.3.132.0.10")),  # secp256k1
        _ec_spki(der.oid("1.3.132.0.35")),  # P-521
    ],
    ids=["explicit parameters", "no parameters", "NULL parameters", "secp256k1", "P-521"],
)
def test_ec_keys_must_name_an_allowed_curve(spki):
    assert _reason(_csr(spki=spki)) == "KEY_NOT_ALLOWED"


def test_rsa_key_without_null_parameters_is_refused():
    rsa_key = key("rsa2048")
    spki = der.seq(der.seq(der.oid(der.OID_RSA_ENCRYPTION)), _spki_key_bits(der.spki_der(rsa_key)))
    assert _reason(der.CsrParts(rsa_key, spki=spki, attributes=[der.extension_request(SAN)]).pem()) == (
        "KEY_NOT_ALLOWED"
    )


def test_unknown_key_algorithm_is_refused():
    spki = der.seq(der.seq(der.oid("1.2.840.10040.4.1")), _spki_key_bits(der.spki_der(EC_KEY)))  # DSA OID
    assert _reason(_csr(spki=spki)) == "KEY_NOT_ALLOWED"


def _spki_key_bits(spki: bytes) -> bytes:
    """The BIT STRING of a SubjectPublicKeyInfo, found by skipping its AlgorithmIdentifier."""
    header = _header(spki)
    return spki[header + 2 + spki[header + 1] :]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d + b"\x00", "CSR_MALFORMED"),  # trailing byte
        (lambda d: d[:-1], "CSR_MALFORMED"),  # truncated
        (lambda d: b"\x30\x80" + d[_header(d) :] + b"\x00\x00", "CSR_MALFORMED"),  # indefinite length
        (lambda d: b"\x30\x84" + (len(d) - _header(d)).to_bytes(4, "big") + d[_header(d) :], "CSR_MALFORMED"),
    ],
    ids=["trailing byte", "truncated", "indefinite length", "non-minimal length"],
)
def test_non_der_outer_encodings_are_refused(mangle, reason):
    good = der.istio_csr(EC_KEY, OWN).der()
    assert _reason(der.to_pem(mangle(good))) == reason


def _header(encoded: bytes) -> int:
    return 2 if encoded[1] < 0x80 else 2 + (encoded[1] & 0x7F)


def test_version_other_than_v1_is_refused():
    assert _reason(der.CsrParts(EC_KEY, version=1, attributes=[der.extension_request(SAN)]).pem()) == "CSR_MALFORMED"


def test_non_canonical_base64_is_refused():
    # an ECDSA signature's DER length varies: take a CSR whose length leaves a 1- or 2-byte tail ("=" padding),
    # so the spare bits of the last character can be set
    body = next(
        lines
        for lines in (der.istio_csr(EC_KEY, OWN).pem().splitlines()[1:-1] for _ in range(200))
        if lines[-1].endswith("=")
    )
    last = body[-1]
    body[-1] = last.rstrip("=")[:-1] + chr(ord(last.rstrip("=")[-1]) + 1) + "=" * (len(last) - len(last.rstrip("=")))
    mangled = "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(body) + "\n-----END CERTIFICATE REQUEST-----\n"
    assert _reason(mangled) == "CSR_MALFORMED"


def test_forwarded_pem_is_the_checked_der_in_canonical_form():
    der_bytes = der.istio_csr(EC_KEY, OWN).der()
    body = base64.b64encode(der_bytes).decode()
    sloppy = "\n  -----BEGIN CERTIFICATE REQUEST-----\r\n" + body[:100] + "\r\n" + body[100:] + "\r\n"
    sloppy += "-----END CERTIFICATE REQUEST-----\n\n"
    parsed = _parse(sloppy)
    assert parsed.pem == der.to_pem(der_bytes)
