"""Without one of the rules the chart grants, meshsigner fails clearly instead of misbehaving: the chart's RBAC is
applied minus one rule (TokenReview in the cert-manager mode; service accounts in offline in-cluster mode), and a
workload's request is refused with UNAVAILABLE (the agent retries) while the log names the refused API call."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import grpc
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import container_args, render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.kube.certmanager.test_chart_rbac import RBAC_KINDS
from tests.kube.certmanager.test_chart_rbac_offline_auth import ENVIRONMENT_FLAGS
from tests.support.csr_builder import make_csr
from tests.support.processes import start_server


def _without(docs: list[dict], group: str, resource: str) -> list[dict]:
    trimmed = []
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            rules = [
                r for r in doc["rules"] if not (group in r.get("apiGroups", []) and resource in r.get("resources", []))
            ]
            assert rules or doc["kind"] == "Role", "a ClusterRole with no rules left"
            doc = {**doc, "rules": rules}
        trimmed.append(doc)
    return trimmed


def test_without_the_tokenreview_rule_requests_are_unavailable_and_the_log_says_why(
    helm, kube_plane, kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer,
    signer_factory, tmp_path: Path,
):  # fmt: skip
    release_ns, cert_ns = make_namespace("release"), make_namespace("certs")
    name = f"meshsigner-norev-{secrets.token_hex(3)}"
    docs = render(
        helm,
        f"nameOverride={name}",
        "app.controller.clusterDuties=false",  # (their rules: tests/kube/test_chart_cluster_duties.py)
        f"app.certmanager.namespace={cert_ns}",
        f"app.certmanager.issuer.name={ca_cluster_issuer.name}",
        "app.certmanager.issuer.kind=ClusterIssuer",
        "app.certmanager.approveCertificateRequests=true",
        namespace=release_ns,
    )
    rbac = _without([d for d in docs if d["kind"] in RBAC_KINDS], "authentication.k8s.io", "tokenreviews")
    try:
        for doc in rbac:
            utils.create_from_dict(kube_api, doc)
        token = mint_token(release_ns, name, audience=None)
        kubeconfig = kubeconfig_for_token(kube_plane, token, tmp_path / "sa.kubeconfig")
        signer = signer_factory(cert_ns, ca_cluster_issuer, "--cluster-duties=false", f"--kubeconfig={kubeconfig}")
        workload_ns = make_namespace("app")
        make_service_account(workload_ns, "web")
        own = f"spiffe://cluster.local/ns/{workload_ns}/sa/web"
        code, chain, details = create(signer.stub(), make_csr([own]), mint_token(workload_ns, "web"))
        assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
        assert not chain
        log = signer.server.log()
        assert "tokenreviews" in log and "403" in log, log[-3000:]
    finally:
        rbac_api = client.RbacAuthorizationV1Api(kube_api)
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(name)


def test_offline_mode_without_the_serviceaccounts_rule_is_not_ready_and_the_log_says_why(
    helm, kube_plane, kube_api, make_namespace, make_service_account, mint_token, wait_for, tmp_path: Path
):
    """The chart's offline in-cluster RBAC minus service accounts: the pod never turns ready (nothing is issued on a
    half-synced view of the cluster), calls are UNAVAILABLE, and the log names the refused list."""
    release_ns = make_namespace("release")
    name = f"meshsigner-nosa-{secrets.token_hex(3)}"
    docs = render(
        helm, f"nameOverride={name}", "app.signer=local", "app.server.authenticator=jwks", "app.logFormat=json",
        "app.controller.clusterDuties=false", namespace=release_ns,
    )  # fmt: skip
    rbac = _without([d for d in docs if d["kind"] in RBAC_KINDS], "", "serviceaccounts")
    try:
        for doc in rbac:
            utils.create_from_dict(kube_api, doc)
        kubeconfig = kubeconfig_for_token(
            kube_plane, mint_token(release_ns, name, audience=None), tmp_path / "sa.kubeconfig"
        )
        flags = [arg for arg in container_args(docs) if not arg.startswith(ENVIRONMENT_FLAGS)]
        server = start_server(
            [*flags, f"--local-ca-dir={tmp_path / 'ca'}", f"--kubeconfig={kubeconfig}"], tmp_path / "s.log", wait=False
        )
        try:
            wait_for(lambda: "serviceaccounts" in server.log() and "403" in server.log(), timeout=30, what="403 logged")
            workload_ns = make_namespace("app")
            make_service_account(workload_ns, "web")
            root = wait_for(lambda: (tmp_path / "ca" / "root-cert.pem").read_bytes(), timeout=30, what="local CA")
            stub = server.stub(root)
            csr, token = make_csr([f"spiffe://cluster.local/ns/{workload_ns}/sa/web"]), mint_token(workload_ns, "web")

            def refused_unsynced() -> bool:
                code, chain, details = create(stub, csr, token)
                assert code is grpc.StatusCode.UNAVAILABLE and not chain, (code, details)
                return "SERVICE_ACCOUNTS_NOT_SYNCED" in details  # (before that: not listening yet, or no keys yet)

            wait_for(refused_unsynced, timeout=30, what="UNAVAILABLE SERVICE_ACCOUNTS_NOT_SYNCED")
            assert not server.ready()
        finally:
            server.stop()
    finally:
        rbac_api = client.RbacAuthorizationV1Api(kube_api)
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(name)
