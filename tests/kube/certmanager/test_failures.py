"""Every way a CertificateRequest can end badly answers with its own status, and leaves nothing behind."""

from __future__ import annotations

import base64
import contextlib
import secrets
import time

import grpc
import pytest
from google.protobuf import struct_pb2
from kubernetes import client

from proto import istio_ca_pb2
from tests.e2e.calls import create
from tests.kube.certmanager.conftest import CM, list_requests, purpose
from tests.kube.plane_fixtures import CAIssuer
from tests.support.csr_builder import make_csr
from tests.support.processes import readyz


def _workload(make_namespace, make_service_account, mint_token) -> tuple[str, str]:
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    return make_csr([f"spiffe://cluster.local/ns/{ns}/sa/{sa}"]), mint_token(ns, sa)


def _wait_empty(kube_api, namespace: str, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while (left := list_requests(kube_api, namespace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize(
    ("decision", "code", "reason"),
    [
        ("deny", grpc.StatusCode.PERMISSION_DENIED, "CERTIFICATE_REQUEST_DENIED"),
        ("fail", grpc.StatusCode.UNAVAILABLE, "CERTIFICATE_REQUEST_FAILED"),
        (None, grpc.StatusCode.UNAVAILABLE, "CERTIFICATE_REQUEST_TIMEOUT"),
    ],
    ids=["denied", "failed", "timeout-no-approver"],
)
def test_refused_requests_answer_and_are_deleted(
    kube_api,
    make_namespace,
    make_service_account,
    mint_token,
    ca_cluster_issuer,
    signer_factory,
    approver,
    decision,
    code,
    reason,
):
    cr_ns = make_namespace("istio-system")
    approver(cr_ns, lambda cr: "approve" if purpose(cr) == "serving" else decision)
    signer = signer_factory(cr_ns, ca_cluster_issuer, "--certificate-request-timeout=2s", approve=False)
    csr, token = _workload(make_namespace, make_service_account, mint_token)
    started = time.monotonic()
    got, chain, details = create(signer.stub(), csr, token)
    elapsed = time.monotonic() - started
    assert (got, chain) == (code, [])
    assert reason in details
    assert elapsed < (3.5 if decision is None else 2.0), elapsed
    assert _wait_empty(kube_api, cr_ns) == []


def test_certificate_request_timeout_fires_before_an_equal_request_timeout(
    kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory, approver
):
    """With equal flags (30 s each by default) the RPC's bound used to fire first, so a request nobody approves
    ended as the generic DEADLINE_EXCEEDED; the CertificateRequest's own timeout now answers first."""
    cr_ns = make_namespace("istio-system")
    approver(cr_ns, lambda cr: "approve" if purpose(cr) == "serving" else None)
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, "--certificate-request-timeout=4s", "--request-timeout=4s", approve=False
    )
    csr, token = _workload(make_namespace, make_service_account, mint_token)
    got, chain, details = create(signer.stub(), csr, token)
    assert (got, chain) == (grpc.StatusCode.UNAVAILABLE, [])
    assert "CERTIFICATE_REQUEST_TIMEOUT" in details, details
    assert 'outcome="timeout",purpose="workload"} 1.0' in signer.server.metrics()
    assert _wait_empty(kube_api, cr_ns) == []


def test_client_cancel_deletes_the_request(
    kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory, approver
):
    cr_ns = make_namespace("istio-system")
    approver(cr_ns, lambda cr: "approve" if purpose(cr) == "serving" else None)
    signer = signer_factory(cr_ns, ca_cluster_issuer, approve=False)
    csr, token = _workload(make_namespace, make_service_account, mint_token)
    request = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600, metadata=struct_pb2.Struct())
    call = signer.stub().CreateCertificate.future(request, metadata=[("authorization", f"Bearer {token}")])
    deadline = time.monotonic() + 15  # cancel only once the workload's CertificateRequest exists
    while not [cr for cr in list_requests(kube_api, cr_ns) if purpose(cr) == "workload"]:
        assert time.monotonic() < deadline, "no CertificateRequest was created"
        time.sleep(0.05)
    call.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    assert _wait_empty(kube_api, cr_ns, timeout=5) == [], "the cancelled RPC's CertificateRequest was left behind"
    assert 'outcome="cancelled",purpose="workload"} 1.0' in signer.server.metrics()


def test_chain_from_an_unpinned_ca_is_refused(
    kube_api, make_namespace, make_service_account, mint_token, make_ca_issuer, signer_factory, tmp_path, pki
):
    """The serving certificate verifies, then the issuer is swapped for one whose CA is not pinned (by editing
    the Issuer's secret, as an attacker with write access would): the chain is refused, never returned."""
    cr_ns = make_namespace("istio-system")
    issuer = make_ca_issuer(cr_ns)
    signer = signer_factory(cr_ns, issuer)
    csr, token = _workload(make_namespace, make_service_account, mint_token)
    assert create(signer.stub(), csr, token)[0] == grpc.StatusCode.OK

    rogue = pki.make_ca("rogue", days=30)
    issuer.replace_key_pair(kube_api, rogue)
    deadline = time.monotonic() + 30
    while True:
        got, chain, details = create(signer.stub(), csr, token)
        if got != grpc.StatusCode.OK:
            break
        assert time.monotonic() < deadline, "the issuer kept signing with the old CA"
        time.sleep(0.5)
    assert (got, chain) == (grpc.StatusCode.FAILED_PRECONDITION, [])
    assert "CHAIN_NOT_TRUSTED" in details
    assert "meshsigner_untrusted_chains_total 1.0" in signer.server.metrics()
    assert _wait_empty(kube_api, cr_ns) == []


def _make_cluster_issuer(kube_api, kube_plane, pki, *, with_secret: bool):
    name = f"late-{secrets.token_hex(3)}"
    ca = pki.make_ca(name)
    body = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": name},
        "spec": {"ca": {"secretName": f"{name}-ca"}},
    }
    client.CustomObjectsApi(kube_api).create_cluster_custom_object(*CM, "clusterissuers", body)

    def add_secret() -> None:
        client.CoreV1Api(kube_api).create_namespaced_secret(
            kube_plane.cluster_resource_namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=f"{name}-ca"),
                type="kubernetes.io/tls",
                data={
                    "tls.crt": base64.b64encode(ca.cert_pem).decode(),
                    "tls.key": base64.b64encode(ca.key_pem).decode(),
                },
            ),
        )

    if with_secret:
        add_secret()
    return name, ca, add_secret


def test_issuer_not_ready_is_reported_then_recovers(
    kube_api, kube_plane, make_namespace, make_service_account, mint_token, signer_factory, pki, tmp_path
):
    name, ca, add_secret = _make_cluster_issuer(kube_api, kube_plane, pki, with_secret=False)
    issuer = CAIssuer(name=name, kind="ClusterIssuer", namespace=None, secret_name=f"{name}-ca", ca=ca)
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(cr_ns, issuer, wait=False)
    try:
        deadline = time.monotonic() + 20
        while True:
            status, body = readyz(signer.server.readiness_port) if _up(signer) else (0, "")
            if status == 503 and "issuer not ready" in body:
                break
            assert signer.server.process.poll() is None, signer.server.log()
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.2)
        assert "serving_certificate not ready" in body
        add_secret()
        deadline = time.monotonic() + 40
        while readyz(signer.server.readiness_port)[0] != 200:
            assert time.monotonic() < deadline, readyz(signer.server.readiness_port)
            time.sleep(0.2)
        csr, token = _workload(make_namespace, make_service_account, mint_token)
        got, _, details = create(signer.stub(), csr, token)
        assert got == grpc.StatusCode.OK, details
    finally:
        with contextlib.suppress(Exception):
            client.CustomObjectsApi(kube_api).delete_cluster_custom_object(*CM, "clusterissuers", name)


def _up(signer) -> bool:
    try:
        readyz(signer.server.readiness_port)
    except OSError:
        return False
    return True


def test_acme_issuer_is_refused_at_start(kube_api, make_namespace, signer_factory):
    from types import SimpleNamespace

    cr_ns = make_namespace("istio-system")
    name = f"acme-{secrets.token_hex(3)}"
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        *CM,
        cr_ns,
        "issuers",
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": name},
            "spec": {
                "acme": {
                    "server": "https://acme.invalid/directory",
                    "privateKeySecretRef": {"name": "acme-account"},
                    "solvers": [{"http01": {"ingress": {}}}],
                }
            },
        },
    )
    issuer = SimpleNamespace(name=name, kind="Issuer", group="cert-manager.io", ca_cert_pem=b"")
    signer = signer_factory(cr_ns, issuer, root_file=None, wait=False)
    assert signer.server.process.wait(20) == 2
    assert "ACME issuers cannot sign SPIFFE URI SANs" in signer.server.log()


def test_leftovers_of_a_crashed_replica_are_swept(kube_api, make_namespace, ca_cluster_issuer, signer_factory, pki):
    cr_ns = make_namespace("istio-system")
    co = client.CustomObjectsApi(kube_api)
    csr_pem, _ = pki.make_csr(uris=("spiffe://cluster.local/ns/x/sa/y",))
    body = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"generateName": "meshsigner-", "labels": {"app.kubernetes.io/managed-by": "meshsigner"}},
        "spec": {"request": base64.b64encode(csr_pem).decode(), "issuerRef": ca_cluster_issuer.issuer_ref},
    }
    leftover = co.create_namespaced_custom_object(*CM, cr_ns, "certificaterequests", body)["metadata"]["name"]
    unrelated = {**body, "metadata": {"name": "not-ours"}}
    co.create_namespaced_custom_object(*CM, cr_ns, "certificaterequests", unrelated)
    time.sleep(2.5)  # older than twice --certificate-request-timeout: no replica can still be waiting for it
    signer_factory(cr_ns, ca_cluster_issuer, "--certificate-request-timeout=1s")
    deadline = time.monotonic() + 10
    while any(cr["metadata"]["name"] == leftover for cr in list_requests(kube_api, cr_ns)):
        assert time.monotonic() < deadline, "the leftover was not swept"
        time.sleep(0.2)
    names = [
        cr["metadata"]["name"] for cr in co.list_namespaced_custom_object(*CM, cr_ns, "certificaterequests")["items"]
    ]
    assert "not-ours" in names
