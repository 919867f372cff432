"""``meshsigner serve --signer cert-manager --authenticator tokenreview`` on the real plane: a client that knows only
gRPC and Istio's proto, with a TokenRequest token, gets a chain signed by cert-manager and rooted in the pinned
root; nothing is left behind."""

from __future__ import annotations

import base64
import time

import grpc
from cryptography import x509

from tests.e2e.calls import create
from tests.kube.certmanager.conftest import list_requests
from tests.support.csr_builder import make_csr


def _spiffe(ns: str, sa: str) -> str:
    return f"spiffe://cluster.local/ns/{ns}/sa/{sa}"


def _wait_no_requests(kube_api, namespace: str, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        left = list_requests(kube_api, namespace)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_workload_gets_chain_from_cluster_issuer(
    kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory
):
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(cr_ns, ca_cluster_issuer)
    ns = make_namespace("workload")
    sa = make_service_account(ns, "app")
    token = mint_token(ns, sa)
    csr = make_csr([_spiffe(ns, sa)])

    started = time.perf_counter()
    code, chain, details = create(signer.stub(), csr, token, validity=3600)
    elapsed = time.perf_counter() - started
    assert code == grpc.StatusCode.OK, details
    assert len(chain) >= 2
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf.issuer == ca_cluster_issuer.ca.cert.subject
    leaf.verify_directly_issued_by(ca_cluster_issuer.ca.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [_spiffe(ns, sa)]
    assert chain[-1].encode() == ca_cluster_issuer.ca_cert_pem  # the pinned bundle, last
    assert elapsed < 5, f"issuance took {elapsed:.2f}s"
    assert _wait_no_requests(kube_api, cr_ns) == []
    metrics = signer.server.metrics()
    assert 'meshsigner_certificate_requests_total{outcome="issued",purpose="workload"} 1.0' in metrics
    # the workload's token was reviewed by the API server (the serving certificate needs no review)
    assert 'meshsigner_token_reviews_total{result="authenticated"} 1.0' in metrics


def test_serving_certificate_comes_from_the_issuer(
    kube_api, make_namespace, ca_cluster_issuer, signer_factory, make_service_account, mint_token
):
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(cr_ns, ca_cluster_issuer)
    # the TLS handshake itself proves the serving chain: the client trusts only the issuer's CA
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    code, _, details = create(signer.stub(), make_csr([_spiffe(ns, sa)]), mint_token(ns, sa))
    assert code == grpc.StatusCode.OK, details
    log = signer.server.log()
    assert "serving certificate obtained" in log
    assert "REFUSED" not in log
    # requested beside the CertificateRequest watch's first list, not refused until it lists and retried later
    assert "serving_certificate_pending" not in log


def test_namespaced_issuer_and_certificate_request_shape(
    kube_api, make_namespace, make_service_account, mint_token, make_ca_issuer, signer_factory
):
    cr_ns = make_namespace("istio-system")
    issuer = make_ca_issuer(cr_ns)
    signer = signer_factory(
        cr_ns,
        issuer,
        "--preserve-certificate-requests",
        "--certificate-request-additional-annotations=example.com/team=mesh,extra=1",
    )
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    csr = make_csr([_spiffe(ns, sa)])
    code, chain, details = create(signer.stub(), csr, mint_token(ns, sa), validity=1800)
    assert code == grpc.StatusCode.OK, details
    x509.load_pem_x509_certificate(chain[0].encode()).verify_directly_issued_by(issuer.ca.cert)

    time.sleep(1)
    kept = [cr for cr in list_requests(kube_api, cr_ns) if "workload" in cr["metadata"]["labels"].values()]
    assert len(kept) == 1, "--preserve-certificate-requests keeps the workload request"
    cr = kept[0]
    assert cr["metadata"]["name"].startswith("meshsigner-")
    assert cr["metadata"]["annotations"]["istio.cert-manager.io/identities"] == _spiffe(ns, sa)
    assert cr["metadata"]["annotations"]["example.com/team"] == "mesh"
    assert cr["metadata"]["annotations"]["extra"] == "1"
    spec = cr["spec"]
    assert spec["isCA"] is False
    assert spec["duration"] in ("30m0s", "1800s")
    assert set(spec["usages"]) == {"digital signature", "key encipherment", "client auth", "server auth"}
    assert spec["issuerRef"] == {"name": issuer.name, "kind": "Issuer", "group": "cert-manager.io"}
    assert base64.b64decode(spec["request"]).decode() == csr  # the PEM exactly as received


def test_istio_own_client_with_a_token_request_token(
    istio_peer, make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory, tmp_path
):
    """Istio's CA client (tests/istio_peer: its CSR generator, gRPC client, TLS rules and response checks) is the
    independent client: it gets a chain signed by cert-manager and rooted in the pinned root."""
    import json
    import subprocess

    peer = istio_peer
    signer = signer_factory(make_namespace("istio-system"), ca_cluster_issuer)
    ns = make_namespace("workload")
    sa = make_service_account(ns, "web")
    (tmp_path / "token").write_text(mint_token(ns, sa))
    (tmp_path / "root.pem").write_bytes(ca_cluster_issuer.ca_cert_pem)
    result = subprocess.run(
        [
            peer,
            f"--ca-addr={signer.server.address}",
            f"--root-cert={tmp_path / 'root.pem'}",
            f"--token-file={tmp_path / 'token'}",
            f"--out-dir={tmp_path}",
            f"--ns={ns}",
            f"--sa={sa}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    chain = json.loads(result.stdout)["certChain"]
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    leaf.verify_directly_issued_by(ca_cluster_issuer.ca.cert)
    assert chain[-1].encode() == ca_cluster_issuer.ca_cert_pem


def test_without_pinned_roots_status_ca_is_trusted_on_first_use(
    make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory
):
    signer = signer_factory(make_namespace("istio-system"), ca_cluster_issuer, root_file=None)
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    code, chain, details = create(signer.stub(), make_csr([_spiffe(ns, sa)]), mint_token(ns, sa))
    assert code == grpc.StatusCode.OK, details
    assert chain[-1].encode() == ca_cluster_issuer.ca_cert_pem  # adopted from the serving request's status.ca
    log = signer.server.log()
    assert "NO --root-ca-file" in log and "signer hijacking" in log
    assert "UNPINNED root bundle adopted" in log
