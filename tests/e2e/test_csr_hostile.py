"""The hostile inputs an attacker sent to ``meshsigner serve`` (local CA, offline JWKS), replayed over real gRPC+TLS.

Each CSR is built byte by byte with our own DER writer (``tests/support/der.py``), never with the product's code.
Every one must be INVALID_ARGUMENT with its reason code and no certificate; never INTERNAL or UNKNOWN, and the
server keeps serving (docs/robustness.md §Attack table, P1/P3/P5).
"""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proto import istio_ca_pb2
from tests.e2e.calls import create
from tests.support import der
from tests.support.csr_builder import make_csr
from tests.support.wire import deeply_nested_request

OWN = "spiffe://cluster.local/ns/orders/sa/web"
INVAL = grpc.StatusCode.INVALID_ARGUMENT
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def _hostile_csrs() -> dict[str, tuple[str, str]]:
    """name -> (PEM, expected reason code)."""
    key = ec.generate_private_key(ec.SECP256R1())
    san = der.extension(der.OID_SAN, der.san(der.uri_name(OWN)), critical=True)
    two_orgs = der.name(
        [der.attribute_type_and_value(der.OID_ORGANIZATION, ""), der.attribute_type_and_value(der.OID_ORGANIZATION, "")]
    )
    ca_true = der.extension(der.OID_BASIC_CONSTRAINTS, der.basic_constraints(True), critical=True)
    x400 = der.context(3, der.seq(), constructed=True)
    edi = der.context(5, der.seq(der.context(1, der.tlv(der.UTF8_STRING, b"x"), constructed=True)), constructed=True)
    return {
        "two O values in one RDN": (
            der.CsrParts(key, subject=two_orgs, attributes=[der.extension_request(san)]).pem(),
            "SUBJECT_NOT_ALLOWED",
        ),
        "extensionRequest with two values": (
            der.CsrParts(key, attributes=[der.attribute(der.OID_EXTENSION_REQUEST, der.seq(san), der.seq(san))]).pem(),
            "CSR_ATTRIBUTE_MALFORMED",
        ),
        "x400Address SAN": (
            der.CsrParts(
                key, attributes=[der.extension_request(der.extension(der.OID_SAN, der.san(der.uri_name(OWN), x400)))]
            ).pem(),
            "SAN_TYPE_NOT_ALLOWED",
        ),
        "ediPartyName SAN": (
            der.CsrParts(
                key, attributes=[der.extension_request(der.extension(der.OID_SAN, der.san(der.uri_name(OWN), edi)))]
            ).pem(),
            "SAN_TYPE_NOT_ALLOWED",
        ),
        "second extensionRequest with CA:TRUE": (
            der.CsrParts(key, attributes=[der.extension_request(san), der.extension_request(ca_true)]).pem(),
            "CSR_DUPLICATE_ATTRIBUTE",
        ),
        "explicit P-256 parameters": (
            der.CsrParts(key, spki=der.explicit_p256_spki(key), attributes=[der.extension_request(san)]).pem(),
            "KEY_NOT_ALLOWED",
        ),
    }


_CASES = _hostile_csrs()


@pytest.mark.parametrize("case", sorted(_CASES))
def test_hostile_csr_is_invalid_argument_and_server_keeps_serving(signer, case):
    pem, reason = _CASES[case]
    code, chain, details = create(signer.stub(), pem, signer.issuer.token())
    assert (code, chain) == (INVAL, [])
    assert details.startswith(reason)
    canary_code, canary_chain, _ = create(signer.stub(), make_csr([OWN]), signer.issuer.token())
    assert canary_code == grpc.StatusCode.OK and len(canary_chain) >= 2


def test_our_own_encoder_builds_an_acceptable_csr(signer):
    """The control for the cases above: the same writer, no hostile part, gets a certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    code, chain, _ = create(signer.stub(), der.istio_csr(key, OWN).pem(), signer.issuer.token())
    assert code == grpc.StatusCode.OK and len(chain) >= 2


def _raw_call(signer, payload: bytes) -> grpc.RpcError | bytes:
    call = signer.channel().unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        return call(payload, metadata=[("authorization", f"Bearer {signer.issuer.token()}")], timeout=20)
    except grpc.RpcError as error:
        return error


def test_metadata_with_70000_keys_is_refused(signer):
    request = istio_ca_pb2.IstioCertificateRequest(csr=make_csr([OWN]), validity_duration=3600)
    for index in range(70_000):
        request.metadata.fields[f"{index:x}"].string_value = ""
    payload = request.SerializeToString()
    assert len(payload) < 1024 * 1024  # under the transport cap: only our bound can refuse it
    error = _raw_call(signer, payload)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == INVAL and error.details().startswith("METADATA_TOO_LARGE")


def test_too_deep_metadata_is_invalid_argument_without_parser_internals(signer):
    error = _raw_call(signer, deeply_nested_request(make_csr([OWN]).encode(), 200))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == INVAL
    assert error.details().startswith("REQUEST_MALFORMED")
    assert "upb" not in error.details() and "pars" not in error.details().lower()


def test_moderately_nested_metadata_is_refused_by_our_depth_bound(signer):
    metadata = {"a": {"a": {"a": {"a": {"a": {"a": {"CertSigner": ""}}}}}}}  # depth 7
    code, chain, details = create(signer.stub(), make_csr([OWN]), signer.issuer.token(), metadata_fields=metadata)
    assert (code, chain) == (INVAL, [])
    assert details.startswith("METADATA_TOO_DEEP")
