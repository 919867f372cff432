"""Every refusal of the signer core over real gRPC + TLS: a non-OK code, no certificate, and the server keeps
serving afterwards (docs/robustness.md §Attack table, post-conditions P1 and P3)."""

from __future__ import annotations

from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from tests.e2e.calls import create
from tests.support.csr_builder import key_usage, make_csr, with_bad_signature
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

OWN = "spiffe://cluster.local/ns/orders/sa/web"
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
PERM = grpc.StatusCode.PERMISSION_DENIED
INVAL = grpc.StatusCode.INVALID_ARGUMENT


def _token_cases(issuer: TokenIssuer) -> dict[str, tuple[str | None, dict[str, Any]]]:
    return {
        "no token": (None, {}),
        "expired": (issuer.token(lifetime=60, issued_offset=-600), {}),
        "wrong audience": (issuer.token(audience="kubernetes.default.svc"), {}),
        "wrong issuer": (issuer.token(issuer="https://issuer.meshsigner.test/"), {}),
        "unknown kid": (issuer.token(kid="other"), {}),
        "kid of the other key type": (issuer.token(algorithm="ES256", kid="rsa-1"), {}),
        "not yet valid": (issuer.token(issued_offset=600), {}),
        "not a service account": (issuer.token(extra={"sub": "alice"}, drop=("kubernetes.io",)), {}),
        "claims disagree with sub": (
            issuer.token(extra={"kubernetes.io": {"namespace": "other", "serviceaccount": {"name": "web"}}}),
            {},
        ),
        "HS256 with a guessed secret": (jwt.encode({"sub": "system:serviceaccount:orders:web"}, "k" * 32), {}),
        "alg none": (
            # PyJWT takes no key for alg none, which its annotation does not allow for
            jwt.encode({"sub": "system:serviceaccount:orders:web"}, None, algorithm="none"),  # type: ignore[arg-type]
            {},
        ),
        "garbage": ("x" * 1024, {}),
        "too large": ("a" * 9000, {}),
        "foreign cluster id": (issuer.token(), {"cluster_id": "evil"}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no token",
        "expired",
        "wrong audience",
        "wrong issuer",
        "unknown kid",
        "kid of the other key type",
        "not yet valid",
        "not a service account",
        "claims disagree with sub",
        "HS256 with a guessed secret",
        "alg none",
        "garbage",
        "too large",
        "foreign cluster id",
    ],
)
def test_token_refusals(signer, case):
    token, options = _token_cases(signer.issuer)[case]
    code, chain, _ = create(signer.stub(), make_csr([OWN]), token, **options)
    assert (code, chain) == (UNAUTH, [])


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Basic b3JkZXJzOndlYg==")],
        [("authorization", "bearer lowercase")],
        [("clusterid", "Kubernetes"), ("clusterid", "Kubernetes")],
    ],
    ids=["basic auth", "lower-case bearer", "two clusterid values"],
)
def test_header_refusals(signer, headers):
    code, chain, _ = create(signer.stub(), make_csr([OWN]), None, cluster_id=None, headers=headers)
    assert (code, chain) == (UNAUTH, [])


def test_two_authorization_headers_refused(signer):
    token = signer.issuer.token()
    code, chain, _ = create(signer.stub(), make_csr([OWN]), token, headers=[("authorization", f"Bearer {token}")])
    assert (code, chain) == (UNAUTH, [])


CSR_CASES = {
    # identity escalation: permission matters
    "another service account": (lambda: make_csr(["spiffe://cluster.local/ns/orders/sa/admin"]), PERM),
    "another namespace": (lambda: make_csr(["spiffe://cluster.local/ns/payments/sa/web"]), PERM),
    "own plus an extra URI": (lambda: make_csr([OWN, "spiffe://cluster.local/ns/orders/sa/admin"]), PERM),
    "own twice": (lambda: make_csr([OWN, OWN]), PERM),
    "foreign trust domain": (lambda: make_csr(["spiffe://evil.example/ns/orders/sa/web"]), PERM),
    "sub-path of own identity": (lambda: make_csr([OWN + "/extra"]), PERM),
    # malformed requests
    "DNS SAN": (lambda: make_csr([OWN], dns=["web.orders.svc"]), INVAL),
    "IP SAN": (lambda: make_csr([OWN], ips=["10.0.0.1"]), INVAL),
    "email SAN": (lambda: make_csr([OWN], emails=["web@orders.example"]), INVAL),
    "common name": (lambda: make_csr([OWN], common_name="web"), INVAL),
    "common name equal to the SPIFFE ID": (lambda: make_csr([OWN], common_name=OWN), INVAL),
    "other subject attribute": (
        lambda: make_csr([OWN], subject=x509.Name([x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "US")])),
        INVAL,
    ),
    "no URI SAN": (lambda: make_csr([]), INVAL),
    "upper-case scheme": (lambda: make_csr(["SPIFFE://cluster.local/ns/orders/sa/web"]), INVAL),
    "upper-case trust domain": (lambda: make_csr(["spiffe://Cluster.local/ns/orders/sa/web"]), INVAL),
    "trailing slash": (lambda: make_csr([OWN + "/"]), INVAL),
    "dot-dot segment": (lambda: make_csr(["spiffe://cluster.local/ns/orders/sa/web/../admin"]), INVAL),
    "empty segment": (lambda: make_csr(["spiffe://cluster.local/ns//orders/sa/web"]), INVAL),
    "percent-encoding": (lambda: make_csr(["spiffe://cluster.local/ns/orders/sa/w%65b"]), INVAL),
    "port": (lambda: make_csr(["spiffe://cluster.local:443/ns/orders/sa/web"]), INVAL),
    "query": (lambda: make_csr([OWN + "?x=1"]), INVAL),
    "URI over 2048 bytes": (lambda: make_csr(["spiffe://cluster.local/" + "a" * 2100]), INVAL),
    "a thousand URIs": (lambda: make_csr([f"spiffe://cluster.local/ns/orders/sa/s{i}" for i in range(1000)]), INVAL),
    "CA:TRUE": (lambda: make_csr([OWN], extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]), INVAL),
    "CA:FALSE": (
        lambda: make_csr([OWN], extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)]),
        INVAL,
    ),
    "key usage keyCertSign": (
        lambda: make_csr([OWN], extensions=[(key_usage(digital_signature=True, key_cert_sign=True), True)]),
        INVAL,
    ),
    "EKU codeSigning": (
        lambda: make_csr([OWN], extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)]),
        INVAL,
    ),
    "unknown extension": (
        lambda: make_csr(
            [OWN],
            extensions=[(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), False)],
        ),
        INVAL,
    ),
    "RSA-1024 key": (lambda: make_csr([OWN], key_kind="rsa1024"), INVAL),
    "P-521 key": (lambda: make_csr([OWN], key_kind="p521"), INVAL),
    "Ed25519 key": (lambda: make_csr([OWN], key_kind="ed25519"), INVAL),
    "SHA-224 signature": (lambda: make_csr([OWN], hash_algorithm=hashes.SHA224()), INVAL),
    "bad signature": (lambda: with_bad_signature(make_csr([OWN])), INVAL),
    "not PEM": (lambda: "hello", INVAL),
    "two PEM blocks": (lambda: make_csr([OWN]) + make_csr([OWN]), INVAL),
    "certificate instead of CSR": (
        lambda: make_csr([OWN]).replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        INVAL,
    ),
    "100 KiB of junk": (
        lambda: "-----BEGIN CERTIFICATE REQUEST-----\n" + "QUFB\n" * 25000 + "-----END CERTIFICATE REQUEST-----\n",
        INVAL,
    ),
}


@pytest.mark.parametrize("case", list(CSR_CASES))
def test_csr_refusals(signer, case):
    build, expected = CSR_CASES[case]
    code, chain, _ = create(signer.stub(), build(), signer.issuer.token())
    assert (code, chain) == (expected, [])


ZTUNNEL = ("istio-system", "ztunnel")


@pytest.mark.parametrize(
    ("fields", "token_identity", "expected", "reason"),
    [
        ({"ImpersonatedIdentity": OWN}, ("orders", "other"), PERM, "IMPERSONATION_NOT_ALLOWED"),
        ({"ImpersonatedIdentity": 42}, ZTUNNEL, INVAL, "METADATA_MALFORMED"),
        ({"ImpersonatedIdentity": "http://x/ns/a/sa/b"}, ZTUNNEL, INVAL, "IMPERSONATED_IDENTITY_MALFORMED"),
        (
            {"ImpersonatedIdentity": "spiffe://cluster.local/ns/a/sa/b/c"},
            ZTUNNEL,
            INVAL,
            "IMPERSONATED_IDENTITY_MALFORMED",
        ),
        (
            {"ImpersonatedIdentity": "spiffe://other.td/ns/orders/sa/web"},
            ZTUNNEL,
            PERM,
            "IMPERSONATION_FOREIGN_TRUST_DOMAIN",
        ),
        # trusted, but standalone mode has no pod informer for the node check
        ({"ImpersonatedIdentity": OWN}, ZTUNNEL, PERM, "IMPERSONATION_NO_NODE_AUTHORIZER"),
    ],
    ids=["untrusted caller", "non-string", "not spiffe", "six segments", "other trust domain", "no node check"],
)
def test_impersonation_refusals(signer, fields, token_identity, expected, reason):
    # the reason code tells these apart from a plain "asked for another identity" (IDENTITY_NOT_ALLOWED)
    code, chain, details = create(
        signer.stub(), make_csr([OWN]), signer.issuer.token(*token_identity), metadata_fields=fields
    )
    assert (code, chain) == (expected, [])
    assert details.startswith(reason + " "), details


def test_server_keeps_serving_and_counts_refusals(signer):
    counter = 'meshsigner_csr_requests_total{code="INVALID_ARGUMENT",reason="CSR_MALFORMED"}'
    before = signer.server.metric(counter)
    for _ in range(20):
        create(signer.stub(), "junk", signer.issuer.token())
    code, chain, _ = create(signer.stub(), make_csr([OWN]), signer.issuer.token())
    assert code is grpc.StatusCode.OK and len(chain) == 2
    assert signer.server.metric(counter) == before + 20
    assert signer.server.process.poll() is None


def test_tokens_never_reach_the_log(signer):
    token = signer.issuer.token("orders", "leaky")
    _, _, other_identity = create(signer.stub(), make_csr([OWN]), token)  # refused: another identity
    _, _, bad_signature = create(signer.stub(), make_csr([OWN]), token[:-4] + "AAAA")  # refused: bad signature
    request_ids = [details.rsplit("request ", 1)[1].rstrip(")") for details in (other_identity, bad_signature)]
    # both refusals reach the log (decision records are written by a writer thread), found by the request id the
    # client was given
    wait_for(lambda: all(request_id in signer.server.log() for request_id in request_ids), "both refusals logged")
    log = signer.server.log()
    assert token not in log and token.split(".")[2] not in log and token.split(".")[1] not in log


def test_oversized_message_is_refused_by_the_transport(signer):
    code, chain, _ = create(signer.stub(), "A" * (2 * 1024 * 1024), signer.issuer.token())
    assert (code, chain) == (grpc.StatusCode.RESOURCE_EXHAUSTED, [])


def test_oversized_metadata_is_refused_and_server_survives(signer):
    code, chain, _ = create(signer.stub(), make_csr([OWN]), "x" * 20_000)
    assert code is not grpc.StatusCode.OK and chain == []
    code, chain, _ = create(signer.stub(), make_csr([OWN]), signer.issuer.token())
    assert code is grpc.StatusCode.OK and len(chain) == 2
