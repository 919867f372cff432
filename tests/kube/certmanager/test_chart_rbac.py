"""meshsigner runs under exactly the RBAC the Helm chart grants (not the admin credentials the other plane tests
use): the chart's ServiceAccount, Roles and bindings are rendered with helm, applied to the real API server, and
a workload gets its certificate through cert-manager with self-approval on, and the process takes the chart's
Lease and keeps istiod's dynamic Certificate (istiodCertificateEnable=dynamic)."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import grpc
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import container_args, render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.support.csr_builder import make_csr

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
DUTY_FLAGS = ("--cluster-duties=", "--leader-election-", "--configmap-namespace-selector=", "--istiod-cert-")


def test_issuance_under_the_charts_rbac(
    helm, kube_plane, kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer,
    signer_factory, wait_for, tmp_path: Path,
):  # fmt: skip
    release_ns = make_namespace("release")
    cert_ns = make_namespace("certs")
    istio_ns = make_namespace("istio")
    name = f"meshsigner-rbac-{secrets.token_hex(3)}"  # cluster-scoped names must not collide across runs
    docs = render(
        helm,
        f"nameOverride={name}",
        # the cluster duties too, on this test's own Lease and (the plane is shared) no namespace's root ConfigMap
        f"app.controller.leaderElectionNamespace={make_namespace('lease')}",
        f"app.controller.leaderElectionName={name}",
        f"app.controller.configmapNamespaceSelector={name}=yes",
        "app.tls.istiodCertificateEnable=dynamic",
        f"app.istio.namespace={istio_ns}",
        f"app.certmanager.namespace={cert_ns}",
        f"app.certmanager.issuer.name={ca_cluster_issuer.name}",
        "app.certmanager.issuer.kind=ClusterIssuer",
        "app.certmanager.approveCertificateRequests=true",
        namespace=release_ns,
    )
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    assert {d["kind"] for d in rbac} == RBAC_KINDS
    try:
        for doc in rbac:
            utils.create_from_dict(kube_api, doc)
        token = mint_token(release_ns, name, audience=None)
        duties = [arg for arg in container_args(docs) if arg.startswith(DUTY_FLAGS)]
        assert "--cluster-duties=true" in duties
        kubeconfig = f"--kubeconfig={kubeconfig_for_token(kube_plane, token, tmp_path / 'sa.kubeconfig')}"
        signer = signer_factory(cert_ns, ca_cluster_issuer, *duties, kubeconfig)
        workload_ns = make_namespace("app")
        make_service_account(workload_ns, "web")
        own = f"spiffe://cluster.local/ns/{workload_ns}/sa/web"
        code, chain, details = create(signer.stub(), make_csr([own]), mint_token(workload_ns, "web"))
        assert code is grpc.StatusCode.OK, details + signer.server.log()[-3000:]
        assert len(chain) >= 2
        wait_for(lambda: signer.server.metric("meshsigner_leader") == 1, timeout=30, what="the Lease taken")
        co = client.CustomObjectsApi(kube_api)
        certificate = ("cert-manager.io", "v1", istio_ns, "certificates", "istiod-dynamic")
        istiod = wait_for(
            lambda: co.get_namespaced_custom_object(*certificate),
            timeout=30,
            what="the leader's istiod-dynamic Certificate",
        )
        assert istiod["spec"]["secretName"] == "istiod-tls"
        assert istiod["spec"]["issuerRef"]["name"] == ca_cluster_issuer.name
        # nothing was refused for want of a permission along the way
        assert '"status": "403"' not in signer.server.log() and "Forbidden" not in signer.server.log()
    finally:
        rbac_api = client.RbacAuthorizationV1Api(kube_api)
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(name)
