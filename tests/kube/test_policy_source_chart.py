"""``app.policySource: kubernetes`` under exactly the RBAC the Helm chart grants, with the chart's own arguments:
meshsigner reads the policy objects, decides from them, and as leader writes their status and a rejection Event,
and no request is refused for want of a permission."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.kube.certmanager.test_chart_rbac import RBAC_KINDS
from tests.kube.certmanager.test_chart_rbac_offline_auth import chart_flags
from tests.kube.test_policy_crds import policy_crds  # noqa: F401  # the CRDs, installed once
from tests.kube.test_policy_source import TEST_LABEL, Policies, own_identity_for
from tests.support.csr_builder import make_csr
from tests.support.processes import start_server
from tests.support.waiting import wait_for


@pytest.mark.usefixtures("policy_crds")
def test_the_kubernetes_source_under_the_charts_rbac(
    helm: str,
    kube_plane: Any,
    kube_api: client.ApiClient,
    make_namespace: Any,
    make_service_account: Any,
    mint_token: Any,
    tmp_path: Path,
) -> None:
    release, root, team = make_namespace("release"), make_namespace("polroot"), make_namespace("team")
    make_service_account(team, "web")
    name = f"meshsigner-policies-{secrets.token_hex(3)}"  # cluster-scoped names must not collide across runs
    label = secrets.token_hex(6)
    docs = render(
        helm,
        f"nameOverride={name}",
        "app.signer=local",
        "app.logFormat=json",
        "app.policySource=kubernetes",
        f"app.policyRootNamespace={root}",
        f"app.policyLabelSelector={TEST_LABEL}={label}",
        f"app.controller.leaderElectionNamespace={root}",
        f"app.controller.leaderElectionName=lease-{label}",
        f"app.controller.configmapNamespaceSelector={TEST_LABEL}={label}",  # no namespace carries it
        namespace=release,
    )
    rbac = [doc for doc in docs if doc["kind"] in RBAC_KINDS]
    policies = Policies(kube_api, label)
    policies.create(root, "baseline", own_identity_for(team))
    for doc in rbac:
        utils.create_from_dict(kube_api, doc)
    rbac_api = client.RbacAuthorizationV1Api(kube_api)
    kubeconfig = kubeconfig_for_token(kube_plane, mint_token(release, name, audience=None), tmp_path / "k")
    server = start_server(
        [*chart_flags(docs), f"--local-ca-dir={tmp_path / 'ca'}", f"--kubeconfig={kubeconfig}"], tmp_path / "s.log"
    )
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        csr = make_csr([f"spiffe://cluster.local/ns/{team}/sa/web"])
        assert create(stub, csr, mint_token(team, "web"))[0] is grpc.StatusCode.OK
        broken = {"rules": [{"name": "x", "effect": "Allow", "identities": ["spiffe://{trustDomain}/ns/a/sa/{nope}"]}]}
        policies.create(root, "broken", broken)
        events = client.CoreV1Api(kube_api)

        def rejected() -> bool:
            listed = events.list_namespaced_event(root, field_selector="involvedObject.name=broken").items
            return any(e.reason == "Rejected" for e in listed)

        wait_for(rejected, "the leader recorded the rejection", timeout=60)
        status = policies.api.get_namespaced_custom_object(
            "meshsigner.io", "v1alpha1", root, "identitypolicies", "baseline"
        )
        assert isinstance(status, dict)
        assert {c["type"]: c["status"] for c in status["status"]["conditions"]} == {"Accepted": "True", "Ready": "True"}
        log = server.log()
        assert '"status": "403"' not in log and "Forbidden" not in log, log[-3000:]
    finally:
        assert server.stop() == 0
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(name)
