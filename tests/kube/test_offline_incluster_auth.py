"""``--authenticator jwks`` in a cluster without ``--jwks-file`` (issue 11 part 5, issue 9 item 9): the issuer and
keys come from the API server's OIDC discovery, certificates are issued with no TokenReview at all, and a token
whose pod or service account was deleted is refused before it expires (the informers see the deletion)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.processes import ServerProcess, start_server
from tests.support.tokens import TokenIssuer


def metric_sum(server: ServerProcess, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(server.metrics())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def offline_signer(kube_plane, tmp_path: Path):
    server = start_server(
        [
            "--signer=local",
            f"--local-ca-dir={tmp_path / 'ca'}",
            "--authenticator=jwks",
            f"--kubeconfig={kube_plane.kubeconfig}",
            "--log-format=json",
        ],
        tmp_path / "serve.log",
    )
    yield server, server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
    server.stop()


def _scheduled_pod(core: client.CoreV1Api, namespace: str, name: str, service_account: str) -> str:
    """A pod on a node (the pod informer lists scheduled pods); no kubelet runs it on this plane."""
    pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                service_account_name=service_account,
                node_name="node-a",
                containers=[client.V1Container(name="c", image="x")],
            ),
        ),
    )
    assert pod.metadata is not None
    return str(pod.metadata.uid)


def _workload(core, make_service_account, mint_token, namespace: str, name: str) -> tuple[str, str, str]:
    """(csr, pod-bound token, pod name) for a new service account with one scheduled pod."""
    account = make_service_account(namespace, name)
    pod = f"{name}-0"
    uid = _scheduled_pod(core, namespace, pod, account)
    token = mint_token(namespace, account, bound_object={"kind": "Pod", "name": pod, "uid": uid})
    return make_csr([f"spiffe://cluster.local/ns/{namespace}/sa/{account}"]), token, pod


def _refused_with(stub, csr: str, token: str, reason: str):
    def check() -> bool:
        code, _, details = create(stub, csr, token)
        return code is grpc.StatusCode.UNAUTHENTICATED and reason in details

    return check


def test_offline_in_cluster_mode_issues_without_token_reviews_and_follows_deletions(
    kube_plane, kube_api, offline_signer, make_namespace, make_service_account, mint_token, wait_for
):
    server, stub = offline_signer
    core = client.CoreV1Api(kube_api)
    namespace = make_namespace("offline")
    csr, token, pod = _workload(core, make_service_account, mint_token, namespace, "web")
    wait_for(lambda: create(stub, csr, token)[0] is grpc.StatusCode.OK, timeout=20, what="first certificate")
    for _ in range(5):
        code, _, details = create(stub, csr, token)
        assert code is grpc.StatusCode.OK, details

    # a forged token with the cluster's issuer but another key, and one from a foreign issuer
    own_issuer = TokenIssuer(issuer=kube_plane.service_account_issuer)
    for forged in (own_issuer.token(namespace, "web", kid="invented"), TokenIssuer().token(namespace, "web")):
        assert create(stub, csr, forged)[0] is grpc.StatusCode.UNAUTHENTICATED

    # the pod goes: its token, still unexpired, is refused as soon as the informer sees the deletion
    deleted = time.monotonic()
    core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
    wait_for(_refused_with(stub, csr, token, "TOKEN_POD_GONE"), timeout=20, what="refusal after pod deletion")
    pod_refused_after = time.monotonic() - deleted

    # the service account goes (its pod stays): refused as well
    csr2, token2, _ = _workload(core, make_service_account, mint_token, namespace, "api")
    wait_for(lambda: create(stub, csr2, token2)[0] is grpc.StatusCode.OK, timeout=20, what="second workload")
    deleted = time.monotonic()
    core.delete_namespaced_service_account("api", namespace)
    wait_for(
        _refused_with(stub, csr2, token2, "TOKEN_SERVICE_ACCOUNT_GONE"), timeout=20, what="refusal after SA deletion"
    )
    sa_refused_after = time.monotonic() - deleted

    reviews = metric_sum(server, "meshsigner_kube_api_requests_total", resource="tokenreviews")
    discovery = metric_sum(server, "meshsigner_kube_api_requests_total", resource="oidc-discovery")
    issued = metric_sum(server, "meshsigner_csr_requests_total", code="OK")
    print(
        f"\noffline in-cluster: {issued:.0f} certificates, {reviews:.0f} TokenReviews, {discovery:.0f} discovery "
        f"reads; refused {pod_refused_after * 1000:.0f} ms after the pod's deletion, {sa_refused_after * 1000:.0f} ms "
        "after the service account's"
    )
    assert reviews == 0
    assert discovery >= 2  # the issuer document and the key set, at least once
    assert issued >= 7
