"""Parses a workload CSR strictly and describes what it asks for (an ``IssuanceRequest``).

Only the shape is judged here: PEM framing, size, signature, key type, subject, extension and SAN kinds. Whether
the caller may have the identities it names is the policy's business (``policies/``).
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from policies import IssuanceRequest
from signer.csr_structure import check_csr_structure
from signer.errors import CsrRejected

MAX_CSR_BYTES = 64 * 1024
MAX_URI_SANS = 8  # far above any legitimate request; beyond it the request is malformed, not merely denied
_PEM = re.compile(
    r"\A\s*-----BEGIN CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END CERTIFICATE REQUEST-----\s*\Z"
)
_CURVES = {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384"}
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_ECDSA_BY_OID = {  # built once: constructing ECDSA() costs more than looking it up
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ec.ECDSA(hashes.SHA512()),
}
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


def _subject_common_name(
    subject: x509.Name, attributes: list[list[tuple[x509.ObjectIdentifier, str | bytes]]]
) -> str | None:
    """Empty subject or a single empty O (pilot-agent's "O=") pass; a CN is reported; anything else is refused."""
    if subject in _ISTIO_SUBJECTS:
        return None
    common_name = None
    for rdn in attributes:
        for oid, value in rdn:
            if oid == NameOID.ORGANIZATION_NAME and value == "" and len(attributes) == 1:
                continue
            if oid == NameOID.COMMON_NAME:
                common_name = str(value)
                continue
            raise CsrRejected("SUBJECT_NOT_ALLOWED", f"subject attribute {oid.dotted_string} not allowed")
    return common_name


class _LibraryErrors:  # a class: @contextmanager costs several times as much per use
    """Whatever the library raises while reading attacker-supplied bytes is a refusal, not a bug of ours.

    Used only around calls into ``cryptography`` that read the CSR (no logic of ours inside), so INTERNAL stays
    for our own mistakes. The library raises more than ValueError (UnsupportedGeneralNameType, DuplicateExtension,
    UnsupportedAlgorithm, ...), and which ones changes between versions, hence ``Exception``.
    """

    __slots__ = ("_reason", "_what")

    def __init__(self, reason: str, what: str) -> None:
        self._reason = reason
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, CsrRejected):
            raise CsrRejected(self._reason, f"{self._what}: {type(exc).__name__}: {exc}") from None


def _decode_pem(pem: str) -> bytes:
    match = _PEM.match(pem)
    if not match:
        raise CsrRejected("CSR_MALFORMED", "expected exactly one PEM block of type CERTIFICATE REQUEST")
    body = match.group(1).replace("\r", "").replace("\n", "")
    try:
        der = binascii.a2b_base64(body, strict_mode=True)
    except binascii.Error as exc:
        raise CsrRejected("CSR_MALFORMED", f"bad base64: {exc}") from None
    if base64.b64encode(der).decode("ascii") != body:  # one spelling only, so every reader sees the same bytes
        raise CsrRejected("CSR_MALFORMED", "base64 not canonical")
    return der


def canonical_pem(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{lines}\n-----END CERTIFICATE REQUEST-----\n"


def _signature_verifies(
    csr: x509.CertificateSigningRequest, public_key: PublicKey, signature_hash: hashes.HashAlgorithm | None
) -> bool:
    """The CSR's self-signature, checked with the key already loaded: ``is_signature_valid`` loads the key again
    and costs a third more for ECDSA. A signature algorithm of another key type than the key's does not verify."""
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            ecdsa = _ECDSA_BY_OID.get(csr.signature_algorithm_oid)
            if ecdsa is None:
                return False
            public_key.verify(csr.signature, csr.tbs_certrequest_bytes, ecdsa)
        elif isinstance(public_key, rsa.RSAPublicKey):
            parameters = csr.signature_algorithm_parameters
            if not isinstance(parameters, padding.PKCS1v15 | padding.PSS) or signature_hash is None:
                return False
            public_key.verify(csr.signature, csr.tbs_certrequest_bytes, parameters, signature_hash)
        else:
            return csr.is_signature_valid  # Ed25519: the library checks the algorithm matches the key
    except InvalidSignature:
        return False
    return True


def parse_csr(pem: str, *, validity_seconds: int, impersonated: str | None, cert_signer: str | None) -> ParsedCsr:
    """Raises CsrRejected with a reason code for anything malformed.

    The DER is walked by our own strict reader first (``csr_structure``), then read by the library; the PEM
    handed on to a backend is re-encoded from exactly the DER that was checked.
    """
    if len(pem) > MAX_CSR_BYTES:
        raise CsrRejected("CSR_TOO_LARGE", f"{len(pem)} bytes, at most {MAX_CSR_BYTES}")
    der = _decode_pem(pem)
    check_csr_structure(der)
    with _LibraryErrors("CSR_MALFORMED", "not a PKCS#10 request"):
        csr = x509.load_der_x509_csr(der)
        public_key = csr.public_key()
    key = key_name(public_key)
    if not isinstance(public_key, PublicKey):  # key_name refused the rest; this narrows the type
        raise CsrRejected("KEY_NOT_ALLOWED", f"key type {type(public_key).__name__} not allowed")
    try:
        signature_hash = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise CsrRejected("CSR_SIGNATURE_ALGORITHM", "unsupported signature algorithm") from None
    except Exception as exc:  # library read of attacker bytes, see _LibraryErrors
        raise CsrRejected("CSR_SIGNATURE_ALGORITHM", f"{type(exc).__name__}: {exc}") from None
    if key != "Ed25519" and not isinstance(signature_hash, _HASHES):
        raise CsrRejected("CSR_SIGNATURE_ALGORITHM", "signature must use SHA-256 or stronger")
    with _LibraryErrors("CSR_SIGNATURE_INVALID", "signature check"):
        signature_valid = _signature_verifies(csr, public_key, signature_hash)
    if not signature_valid:
        raise CsrRejected("CSR_SIGNATURE_INVALID", "the CSR's self-signature does not verify")
    # attributes: check_csr_structure allowed one extensionRequest and nothing else, on these very bytes
    with _LibraryErrors("CSR_MALFORMED", "subject"), warnings.catch_warnings():
        # pilot-agent's "O=" is shorter than X.520 allows and the library warns about it; a warning is no refusal
        warnings.simplefilter("ignore", UserWarning)
        subject = csr.subject
        subject_attributes = [[(a.oid, a.value) for a in rdn] for rdn in subject.rdns]
    common_name = _subject_common_name(subject, subject_attributes)
    with _LibraryErrors("CSR_MALFORMED", "extensions"):
        extensions = list(csr.extensions)  # parses every extension value here, SAN entries included

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
    return ParsedCsr(csr=csr, public_key=public_key, pem=canonical_pem(der), request=request)


__all__ = ["MAX_CSR_BYTES", "ParsedCsr", "canonical_pem", "key_name", "parse_csr"]
