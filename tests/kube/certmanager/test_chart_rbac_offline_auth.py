"""Offline in-cluster authentication (``app.server.authenticator: jwks`` without a file) under exactly the RBAC the
chart renders for it, with the chart's own arguments: meshsigner reads the cluster's keys through OIDC discovery,
lists and watches service accounts and pods with the chart's ServiceAccount, issues without any TokenReview (the
chart grants none in this mode), and refuses a deleted pod's token (so the watch, not only the list, is allowed)."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import grpc
import pytest
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import container_args, render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.kube.certmanager.test_chart_rbac import RBAC_KINDS
from tests.kube.test_offline_incluster_auth import _refused_with, _workload, metric_sum
from tests.support.processes import start_server

# The pod's listen addresses and in-pod paths: the test process chooses its own.
ENVIRONMENT_FLAGS = ("--serving-address=", "--readiness-probe-port=", "--metrics-port=", "--local-ca-dir=")


def chart_flags(docs: list[dict]) -> list[str]:
    return [arg for arg in container_args(docs) if not arg.startswith(ENVIRONMENT_FLAGS)]


@pytest.mark.parametrize("signer", ["cert-manager", "local"])
def test_offline_in_cluster_authentication_under_the_charts_rbac(
    helm, kube_plane, kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer,
    signer_factory, wait_for, tmp_path: Path, signer: str,
):  # fmt: skip
    release_ns, cert_ns = make_namespace("release"), make_namespace("certs")
    name = f"meshsigner-jwks-{secrets.token_hex(3)}"  # cluster-scoped names must not collide across runs
    docs = render(
        helm,
        f"nameOverride={name}",
        f"app.signer={signer}",
        "app.server.authenticator=jwks",
        "app.logFormat=json",
        "app.controller.clusterDuties=false",  # (their rules: tests/kube/test_chart_cluster_duties.py)
        f"app.certmanager.namespace={cert_ns}",
        f"app.certmanager.issuer.name={ca_cluster_issuer.name}",
        "app.certmanager.issuer.kind=ClusterIssuer",
        "app.certmanager.approveCertificateRequests=true",
        namespace=release_ns,
    )
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    rendered_rules = [rule for d in rbac if d["kind"] == "ClusterRole" for rule in d["rules"]]
    assert not any("tokenreviews" in rule.get("resources", []) for rule in rendered_rules)
    flags = chart_flags(docs)
    try:
        for doc in rbac:
            utils.create_from_dict(kube_api, doc)
        token = mint_token(release_ns, name, audience=None)
        kubeconfig = f"--kubeconfig={kubeconfig_for_token(kube_plane, token, tmp_path / 'sa.kubeconfig')}"
        if signer == "cert-manager":
            cluster_signer = signer_factory(cert_ns, ca_cluster_issuer, *flags, kubeconfig)
            server, stub = cluster_signer.server, cluster_signer.stub()
        else:
            server = start_server([*flags, f"--local-ca-dir={tmp_path / 'ca'}", kubeconfig], tmp_path / "serve.log")
            stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        try:
            core = client.CoreV1Api(kube_api)
            workload_ns = make_namespace("app")
            csr, pod_token, pod = _workload(core, make_service_account, mint_token, workload_ns, "web")
            wait_for(lambda: create(stub, csr, pod_token)[0] is grpc.StatusCode.OK, timeout=30, what="a certificate")
            code, chain, details = create(stub, csr, pod_token)
            assert code is grpc.StatusCode.OK and len(chain) >= 2, details
            core.delete_namespaced_pod(pod, workload_ns, grace_period_seconds=0)
            wait_for(_refused_with(stub, csr, pod_token, "TOKEN_POD_GONE"), timeout=20, what="refusal after deletion")
            assert metric_sum(server, "meshsigner_kube_api_requests_total", resource="tokenreviews") == 0
            assert metric_sum(server, "meshsigner_kube_api_requests_total", resource="oidc-discovery") >= 2
            log = server.log()
            # nothing was refused for want of a permission along the way
            assert '"status": "403"' not in log and "Forbidden" not in log, log[-3000:]
        finally:
            if signer == "local":
                server.stop()
    finally:
        rbac_api = client.RbacAuthorizationV1Api(kube_api)
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(name)
