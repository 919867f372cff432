"""Our own walk of a CSR's DER, before any library reads it.

docs/robustness.md §Defensive principles, CSR says what is refused and why.

A library answers "the first extensionRequest", "the curve object", "the attribute it models"; the issuer behind
us (Go) may read every occurrence. So the shape that matters is checked here, on the bytes that get forwarded:

- CertificationRequest = SEQUENCE { info, signatureAlgorithm, BIT STRING } and nothing after it;
- info = SEQUENCE { version 0, subject, subjectPKInfo, [0] attributes };
- subject: every RDN holds exactly one attribute (Istio's clients never send a multi-valued RDN);
- subjectPKInfo: id-ecPublicKey with a namedCurve OID for P-256 or P-384 (explicit parameters refused),
  rsaEncryption with NULL parameters, or Ed25519 with none;
- attributes: only extensionRequest, at most once, with exactly one value; extension OIDs unique;
- SAN entries only of the kinds the signer models (rfc822Name, dNSName, URI, iPAddress), primitive.
"""

from __future__ import annotations

from signer.der import (
    BIT_STRING,
    NULL,
    OBJECT_IDENTIFIER,
    OCTET_STRING,
    SEQUENCE,
    SET,
    DerError,
    Element,
    decode_boolean,
    decode_oid,
    decode_small_integer,
    known_oids,
    read_single,
)
from signer.errors import CsrRejected

EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
SUBJECT_ALT_NAME = "2.5.29.17"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
ED25519 = "1.3.101.112"
NAMED_CURVES = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384"}
# what Istio's clients send, decoded without a walk (the walk still refuses anything not minimally encoded)
_KNOWN_OIDS = known_oids(
    EXTENSION_REQUEST,
    SUBJECT_ALT_NAME,
    EC_PUBLIC_KEY,
    RSA_ENCRYPTION,
    ED25519,
    *NAMED_CURVES,
    "2.5.4.3",  # commonName
    "2.5.4.10",  # organizationName
    "2.5.29.14",  # subjectKeyIdentifier
    "2.5.29.15",  # keyUsage
    "2.5.29.19",  # basicConstraints
    "2.5.29.37",  # extendedKeyUsage
)
ATTRIBUTES_TAG = 0xA0  # [0] IMPLICIT SET OF Attribute
MAX_EXTENSIONS = 32
MAX_SAN_ENTRIES = 64
# GeneralName kinds (context tag numbers) the signer models; the others are refused outright
_SAN_KINDS = {1: "rfc822Name", 2: "dNSName", 6: "uniformResourceIdentifier", 7: "iPAddress"}
_SAN_KIND_NAMES = {0: "otherName", 3: "x400Address", 4: "directoryName", 5: "ediPartyName", 8: "registeredID"}


def check_csr_structure(der: bytes) -> None:
    """Raises CsrRejected (a reason code, the detail for the log) unless the DER has the shape described above."""
    try:
        _check(der)
    except DerError as exc:
        raise CsrRejected("CSR_MALFORMED", f"not strict DER: {exc}") from None


def _check(der: bytes) -> None:
    outer = _fields(read_single(der, "CertificationRequest"), SEQUENCE, 3, "CertificationRequest")
    info, signature_algorithm, signature = outer
    signature_algorithm.expect(SEQUENCE, "signatureAlgorithm")
    _bit_string_bytes(signature, "signature")
    version, subject, spki, attributes = _fields(info, SEQUENCE, 4, "CertificationRequestInfo")
    if decode_small_integer(version) != 0:
        raise CsrRejected("CSR_MALFORMED", "version must be 0 (v1)")
    _check_subject(subject)
    _check_public_key_info(spki)
    _check_attributes(attributes.expect(ATTRIBUTES_TAG, "attributes"))


def _fields(element: Element, tag: int, count: int, what: str) -> list[Element]:
    children = element.expect(tag, what).children()
    if len(children) != count:
        raise DerError(f"{what}: {len(children)} fields, expected {count}")
    return children


def _bit_string_bytes(element: Element, what: str) -> bytes:
    element.expect(BIT_STRING, what)
    if not element.content or element.content[0] != 0:
        raise DerError(f"{what}: bit string with unused bits")
    return element.content[1:]


def _check_subject(subject: Element) -> None:
    for rdn in subject.expect(SEQUENCE, "subject").children():
        values = rdn.expect(SET, "relative distinguished name").children()
        if len(values) != 1:
            raise CsrRejected("SUBJECT_NOT_ALLOWED", f"an RDN holds {len(values)} attributes, expected exactly 1")
        type_and_value = _fields(values[0], SEQUENCE, 2, "AttributeTypeAndValue")
        decode_oid(type_and_value[0], _KNOWN_OIDS)


def _check_public_key_info(spki: Element) -> None:
    algorithm, key_bits = _fields(spki, SEQUENCE, 2, "subjectPublicKeyInfo")
    _bit_string_bytes(key_bits, "subjectPublicKey")
    algorithm_fields = algorithm.expect(SEQUENCE, "algorithm").children()
    if not 1 <= len(algorithm_fields) <= 2:
        raise DerError("AlgorithmIdentifier: wrong number of fields")
    algorithm_oid = decode_oid(algorithm_fields[0], _KNOWN_OIDS)
    parameters = algorithm_fields[1] if len(algorithm_fields) == 2 else None
    if algorithm_oid == EC_PUBLIC_KEY:
        if parameters is None or parameters.tag != OBJECT_IDENTIFIER:
            raise CsrRejected("KEY_NOT_ALLOWED", "EC key parameters must name the curve (explicit parameters refused)")
        curve = decode_oid(parameters, _KNOWN_OIDS)
        if curve not in NAMED_CURVES:
            raise CsrRejected("KEY_NOT_ALLOWED", f"EC curve {curve} not allowed (P-256 or P-384)")
    elif algorithm_oid == RSA_ENCRYPTION:
        if parameters is None or parameters.tag != NULL or parameters.content:
            raise CsrRejected("KEY_NOT_ALLOWED", "rsaEncryption parameters must be NULL")
    elif algorithm_oid == ED25519:
        if parameters is not None:
            raise CsrRejected("KEY_NOT_ALLOWED", "Ed25519 keys carry no parameters")
    else:
        raise CsrRejected("KEY_NOT_ALLOWED", f"public key algorithm {algorithm_oid} not allowed")


def _check_attributes(attributes: Element) -> None:
    seen_extension_request = False
    for attribute in attributes.children():
        type_element, values = _fields(attribute, SEQUENCE, 2, "Attribute")
        attribute_oid = decode_oid(type_element, _KNOWN_OIDS)
        if attribute_oid != EXTENSION_REQUEST:
            raise CsrRejected("CSR_ATTRIBUTE_NOT_ALLOWED", f"attribute {attribute_oid}")
        if seen_extension_request:
            raise CsrRejected("CSR_DUPLICATE_ATTRIBUTE", "more than one extensionRequest attribute")
        seen_extension_request = True
        value_list = values.expect(SET, "attribute values").children()
        if len(value_list) != 1:
            raise CsrRejected("CSR_ATTRIBUTE_MALFORMED", f"extensionRequest with {len(value_list)} values")
        _check_extensions(value_list[0])


def _check_extensions(extensions: Element) -> None:
    seen: set[str] = set()
    entries = extensions.expect(SEQUENCE, "Extensions").children()
    if len(entries) > MAX_EXTENSIONS:
        raise CsrRejected("CSR_MALFORMED", f"{len(entries)} extensions")
    for entry in entries:
        fields = entry.expect(SEQUENCE, "Extension").children()
        if not 2 <= len(fields) <= 3:
            raise DerError("Extension: wrong number of fields")
        extension_oid = decode_oid(fields[0], _KNOWN_OIDS)
        if len(fields) == 3:
            decode_boolean(fields[1])
        value = fields[-1].expect(OCTET_STRING, "extnValue")
        if extension_oid in seen:
            raise CsrRejected("CSR_DUPLICATE_EXTENSION", f"extension {extension_oid} appears twice")
        seen.add(extension_oid)
        if extension_oid == SUBJECT_ALT_NAME:
            _check_san(read_single(value.content, "subjectAltName"))


def _check_san(general_names: Element) -> None:
    names = general_names.expect(SEQUENCE, "GeneralNames").children()
    if not names:
        raise DerError("GeneralNames: empty")
    if len(names) > MAX_SAN_ENTRIES:
        raise CsrRejected("TOO_MANY_URI_SANS", f"{len(names)} SAN entries")
    for general_name in names:
        number = general_name.tag_number
        if general_name.tag_class != 2 or number not in _SAN_KINDS:
            kind = _SAN_KIND_NAMES.get(number, f"tag 0x{general_name.tag:02x}")
            raise CsrRejected("SAN_TYPE_NOT_ALLOWED", f"SAN of type {kind} not allowed")
        if general_name.constructed:
            raise DerError(f"{_SAN_KINDS[number]} must be primitive")


__all__ = ["EXTENSION_REQUEST", "check_csr_structure"]
