"""Parses a workload CSR strictly and describes what it asks for (an ``IssuanceRequest``).

Only the shape is judged here: PEM framing, size, signature, key type, subject, extension and SAN kinds. Whether
the caller may have the identities it names is the policy's business (``policies/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policies import IssuanceRequest
from signer.errors import CsrRejected

MAX_CSR_BYTES = 64 * 1024
MAX_URI_SANS = 8  # far above any legitimate request; beyond it the request is malformed, not merely denied
_PEM = re.compile(
    r"\A\s*-----BEGIN CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE REQUEST-----\s*\Z"
)
_CURVES = {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384"}
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_KEY_USAGE_NAMES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "ocspSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "any",
}
_EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14"


_ISTIO_SUBJECTS = (x509.Name([]), x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "")]))


@dataclass(frozen=True, slots=True)
class ParsedCsr:
    csr: x509.CertificateSigningRequest
    public_key: PublicKey
    pem: str
    request: IssuanceRequest


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def key_name(public_key: object) -> str:
    """The policy vocabulary name of a CSR key; refuses key types Istio's clients never produce."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = _CURVES.get(public_key.curve.name)
        if name is None:
            raise CsrRejected("KEY_NOT_ALLOWED", f"EC curve {public_key.curve.name} not allowed (P-256 or P-384)")
        return name
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        if not 2048 <= public_key.key_size <= 8192:
            raise CsrRejected("KEY_NOT_ALLOWED", f"RSA-{public_key.key_size} not allowed (2048 to 8192 bits)")
        if numbers.e % 2 == 0 or not 3 <= numbers.e < 2**31:
            raise CsrRejected("KEY_NOT_ALLOWED", "RSA public exponent must be odd, from 3 to 2^31-1")
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    raise CsrRejected("KEY_NOT_ALLOWED", f"key type {type(public_key).__name__} not allowed")


def _subject_common_name(csr: x509.CertificateSigningRequest) -> str | None:
    """Empty subject or a single empty O (pilot-agent's "O=") pass; a CN is reported; anything else is refused."""
    subject = csr.subject
    if subject in _ISTIO_SUBJECTS:
        return None
    common_name = None
    for rdn in subject.rdns:
        for attribute in rdn:
            if attribute.oid == NameOID.ORGANIZATION_NAME and attribute.value == "" and len(subject.rdns) == 1:
                continue
            if attribute.oid == NameOID.COMMON_NAME:
                common_name = str(attribute.value)
                continue
            raise CsrRejected("SUBJECT_NOT_ALLOWED", f"subject attribute {attribute.oid.dotted_string} not allowed")
    return common_name


def parse_csr(pem: str, *, validity_seconds: int, impersonated: str | None, cert_signer: str | None) -> ParsedCsr:
    """Raises CsrRejected with a reason code for anything malformed."""
    if len(pem) > MAX_CSR_BYTES:
        raise CsrRejected("CSR_TOO_LARGE", f"{len(pem)} bytes, at most {MAX_CSR_BYTES}")
    if not _PEM.match(pem):
        raise CsrRejected("CSR_MALFORMED", "expected exactly one PEM block of type CERTIFICATE REQUEST")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise CsrRejected("CSR_MALFORMED", f"not a PKCS#10 request: {exc}") from None
    key = key_name(public_key)
    try:
        signature_hash = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CsrRejected("CSR_SIGNATURE_ALGORITHM", "unsupported signature algorithm") from None
    if key != "Ed25519" and not isinstance(signature_hash, _HASHES):
        raise CsrRejected("CSR_SIGNATURE_ALGORITHM", "signature must use SHA-256 or stronger")
    if not csr.is_signature_valid:
        raise CsrRejected("CSR_SIGNATURE_INVALID", "the CSR's self-signature does not verify")
    for attribute in csr.attributes:
        if attribute.oid.dotted_string != _EXTENSION_REQUEST_OID:
            raise CsrRejected("CSR_ATTRIBUTE_NOT_ALLOWED", f"attribute {attribute.oid.dotted_string}")
    common_name = _subject_common_name(csr)
    try:
        extensions = list(csr.extensions)
    except (x509.DuplicateExtension, ValueError) as exc:
        raise CsrRejected("CSR_MALFORMED", f"bad extensions: {exc}") from None

    uris: list[str] = []
    dns_names: list[str] = []
    ips: list[str] = []
    emails: list[str] = []
    other_sans: list[str] = []
    usages: list[str] = []
    unknown: list[str] = []
    is_ca = False
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                if isinstance(name, x509.UniformResourceIdentifier):
                    uris.append(name.value)
                elif isinstance(name, x509.DNSName):
                    dns_names.append(name.value)
                elif isinstance(name, x509.IPAddress):
                    ips.append(str(name.value))
                elif isinstance(name, x509.RFC822Name):
                    emails.append(name.value)
                else:
                    other_sans.append(type(name).__name__)
        elif isinstance(value, x509.KeyUsage):
            usages.extend(_camel(n) for n in _KEY_USAGE_NAMES if getattr(value, n))
            if value.key_agreement and (value.encipher_only or value.decipher_only):
                usages.append("encipherOnly" if value.encipher_only else "decipherOnly")
        elif isinstance(value, x509.ExtendedKeyUsage):
            usages.extend(_EKU_NAMES.get(oid, oid.dotted_string) for oid in value)
        elif isinstance(value, x509.BasicConstraints) and value.ca:
            is_ca = True
        else:
            unknown.append(extension.oid.dotted_string)
    if len(uris) > MAX_URI_SANS:
        raise CsrRejected("TOO_MANY_URI_SANS", f"{len(uris)} URI SANs")
    request = IssuanceRequest(
        uris=tuple(uris),
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ips),
        email_addresses=tuple(emails),
        other_san_types=tuple(other_sans),
        common_name=common_name,
        is_ca=is_ca,
        key=key,
        usages=tuple(usages),
        unknown_extensions=tuple(unknown),
        validity_seconds=validity_seconds,
        impersonated_identity=impersonated,
        cert_signer=cert_signer,
    )
    return ParsedCsr(csr=csr, public_key=public_key, pem=pem, request=request)


__all__ = ["MAX_CSR_BYTES", "ParsedCsr", "key_name", "parse_csr"]
