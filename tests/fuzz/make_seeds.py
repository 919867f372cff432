"""Writes the committed seed corpus (tests/fuzz/corpus/<target>/); run again only to change the seeds.

    python -m tests.fuzz.make_seeds

CSR seeds in sign-the-info mode (first byte 1) carry only a CertificationRequestInfo: the target signs it with
the harness key its SPKI names, so mutations of the subject, attributes and extensions still reach the code
behind the signature check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from proto import istio_ca_pb2
from tests.fuzz.targets import (
    CORPUS_ROOT,
    CSR_MODE_DER,
    CSR_MODE_PEM_TEXT,
    CSR_MODE_SIGN_INFO,
    JWT_ISSUER,
    JWT_MODE_OWN_SIGNATURE,
    JWT_MODE_RAW,
    JWT_MODE_SIGNED,
    JWT_SEPARATOR,
    _harness_keys,
)
from tests.support import der

OWN = "spiffe://cluster.local/ns/orders/sa/web"
POLICY_FIXTURES = Path(__file__).parents[1] / "policies" / "fixtures" / "policies"


def _csr_seeds() -> dict[str, bytes]:
    keys, _ = _harness_keys()
    p256, p384, ed = list(keys.values())
    san = der.extension(der.OID_SAN, der.san(der.uri_name(OWN)), critical=True)
    org = der.attribute_type_and_value(der.OID_ORGANIZATION, "")

    def info(key, **parts) -> bytes:
        parts.setdefault("attributes", [der.extension_request(san)])
        return bytes([CSR_MODE_SIGN_INFO]) + der.CsrParts(key, **parts).info()

    def ext(oid: str, value: bytes, critical: bool = False) -> list[bytes]:
        return [der.extension_request(san, der.extension(oid, value, critical=critical))]

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    eku_code_signing = der.seq(der.oid("1.3.6.1.5.5.7.3.3"))
    return {
        "pilot-agent-p256": info(p256),
        "ztunnel-p256-empty-subject": info(p256, subject=der.seq()),
        "p384": info(p384),
        "ed25519": info(ed),
        "no-attributes": info(p256, attributes=[]),
        "cn-set": info(p256, subject=der.name([org], [der.attribute_type_and_value(der.OID_COMMON_NAME, OWN)])),
        "dns-ip-email-san": info(
            p256,
            attributes=[
                der.extension_request(
                    der.extension(
                        der.OID_SAN,
                        der.san(
                            der.uri_name(OWN),
                            der.context(2, b"example.com", constructed=False),
                            der.context(7, b"\x7f\x00\x00\x01", constructed=False),
                            der.context(1, b"a@b.c", constructed=False),
                        ),
                    )
                )
            ],
        ),
        "basic-constraints-ca": info(p256, attributes=ext(der.OID_BASIC_CONSTRAINTS, der.basic_constraints(True))),
        "eku-code-signing": info(p256, attributes=ext("2.5.29.37", eku_code_signing)),
        "ku-key-cert-sign": info(p256, attributes=ext(der.OID_KEY_USAGE, der.tlv(der.BIT_STRING, b"\x02\x04"), True)),
        "two-extension-requests": info(
            p256,
            attributes=[
                der.extension_request(san),
                der.extension_request(der.extension(der.OID_BASIC_CONSTRAINTS, der.basic_constraints(True))),
            ],
        ),
        "two-o-one-rdn": info(p256, subject=der.name([org, org])),
        "explicit-ec-parameters": info(p256, spki=der.explicit_p256_spki(p256)),
        "x400-san": info(
            p256,
            attributes=[
                der.extension_request(
                    der.extension(der.OID_SAN, der.san(der.uri_name(OWN), der.context(3, der.seq(), constructed=True)))
                )
            ],
        ),
        "rsa-2048": bytes([CSR_MODE_DER]) + der.istio_csr(rsa_key, OWN).der(),
        "rsa-1024": bytes([CSR_MODE_DER]) + der.istio_csr(rsa_small, OWN).der(),
        "pem-text": bytes([CSR_MODE_PEM_TEXT]) + der.istio_csr(p256, OWN).pem().encode(),
    }


def _jwt_seeds() -> dict[str, bytes]:
    header = json.dumps({"alg": "ES256", "kid": "fuzz-1", "typ": "JWT"}).encode()
    claims = {
        "iss": JWT_ISSUER,
        "aud": ["istio-ca"],
        "exp": 4102444800,
        "iat": 1700000000,
        "sub": "system:serviceaccount:orders:web",
        "kubernetes.io": {
            "namespace": "orders",
            "serviceaccount": {"name": "web", "uid": "0d7a"},
            "pod": {"name": "web-1", "uid": "5c1e"},
        },
    }
    body = header + JWT_SEPARATOR + json.dumps(claims).encode()
    return {
        "signed-valid": bytes([JWT_MODE_SIGNED]) + body,
        "own-signature": bytes([JWT_MODE_OWN_SIGNATURE]) + body + JWT_SEPARATOR + b"\x01" * 64,
        "raw-compact": bytes([JWT_MODE_RAW]) + b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    }


def _metadata_seeds() -> dict[str, bytes]:
    def request(metadata: dict | None) -> bytes:
        message = istio_ca_pb2.IstioCertificateRequest(csr="-----BEGIN CERTIFICATE REQUEST-----", validity_duration=1)
        if metadata is not None:
            message.metadata.update(metadata)
        return message.SerializeToString()

    return {
        "absent": request(None),
        "pilot-agent": request({"CertSigner": ""}),
        "ztunnel": request({"ImpersonatedIdentity": OWN}),
        "nested": request({"a": {"b": [1, "x", {"c": None}]}}),
    }


def main() -> None:
    seeds = {
        "csr": _csr_seeds(),
        "spiffe": {
            "istio": OWN.encode(),
            "non-istio-path": b"spiffe://example.org/a/b/c",
            "trailing-slash": OWN.encode() + b"/",
            "upper-scheme": b"SPIFFE://cluster.local/ns/a/sa/b",
            "percent": b"spiffe://cluster.local/ns/a%2Fb/sa/c",
            "dot-segment": b"spiffe://cluster.local/ns/../sa/b",
        },
        "jwks": _jwt_seeds(),
        "metadata": _metadata_seeds(),
        "policy": {path.stem: path.read_bytes() for path in sorted(POLICY_FIXTURES.glob("*.yaml"))},
    }
    for target, files in seeds.items():
        directory = CORPUS_ROOT / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
