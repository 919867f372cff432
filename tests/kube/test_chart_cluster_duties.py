"""The cluster duties under exactly the RBAC the Helm chart grants, with the chart's own arguments: meshsigner
(local signer, TokenReviews, so it talks to the API server) takes the chart's Lease and, as leader, writes
istio-ca-root-cert into a namespace created afterwards, the ClusterTrustBundle and (istiodCertificateEnable=dynamic)
the Secret istiod-tls, all with rules limited to those names, and no request is refused for want of a permission.
Without the chart's Lease rules it keeps serving certificates, logs the 403, never leads and distributes nothing."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.kube.certmanager.test_chart_rbac import RBAC_KINDS
from tests.kube.certmanager.test_chart_rbac_offline_auth import chart_flags
from tests.kube.certmanager.test_chart_rbac_removed import _without
from tests.kube.test_offline_incluster_auth import metric_sum
from tests.support.csr_builder import make_csr
from tests.support.processes import ServerProcess, start_server

ROOT_CONFIG_MAP = "istio-ca-root-cert"
CTB = ("certificates.k8s.io", "clustertrustbundles")


def _root_config_map(core: client.CoreV1Api, namespace: str) -> str | None:
    try:
        return (core.read_namespaced_config_map(ROOT_CONFIG_MAP, namespace).data or {}).get("root-cert.pem")
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


class Release:
    """The chart rendered for one test: unique cluster-scoped names, its own Lease namespace and name, root ConfigMaps
    only for namespaces carrying this test's label (the plane is shared), short lease timings."""

    def __init__(self, helm: str, make_namespace) -> None:
        self.namespace = make_namespace("release")
        self.lease_namespace = make_namespace("lease")
        self.name = f"meshsigner-duties-{secrets.token_hex(3)}"
        self.lease_name = f"lease-{secrets.token_hex(3)}"
        self.label = f"meshsigner-duties-{secrets.token_hex(3)}"
        self.istio_namespace = make_namespace("istio")
        self.bundle = f"meshsigner-duties-{secrets.token_hex(3)}"  # unlinked: no signer, no attest
        self.docs = render(
            helm,
            f"nameOverride={self.name}",
            "app.signer=local",
            "app.logFormat=json",
            f"app.controller.leaderElectionNamespace={self.lease_namespace}",
            f"app.controller.leaderElectionName={self.lease_name}",
            "app.controller.leaderElectionLeaseDuration=4s",
            "app.controller.leaderElectionRenewDeadline=3s",
            "app.controller.leaderElectionRetryPeriod=1s",
            f"app.controller.configmapNamespaceSelector={self.label}=yes",
            f"app.controller.clusterTrustBundleName={self.bundle}",
            "app.tls.istiodCertificateEnable=dynamic",
            f"app.istio.namespace={self.istio_namespace}",
            "app.tls.istiodPrivateKeyAlgorithm=ECDSA",
            "app.tls.istiodPrivateKeySize=256",
            namespace=self.namespace,
        )
        self.rbac = [doc for doc in self.docs if doc["kind"] in RBAC_KINDS]


@pytest.fixture
def release(helm, kube_api, make_namespace) -> Iterator[Release]:
    rendered = Release(helm, make_namespace)
    yield rendered
    rbac_api = client.RbacAuthorizationV1Api(kube_api)
    for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
        with contextlib.suppress(client.ApiException):
            delete(rendered.name)
    for version in ("v1", "v1beta1", "v1alpha1"):
        with contextlib.suppress(client.ApiException):
            client.CustomObjectsApi(kube_api).delete_cluster_custom_object(CTB[0], version, CTB[1], rendered.bundle)


def _bundle(kube_api, name: str) -> str | None:
    for version in ("v1", "v1beta1", "v1alpha1"):
        try:
            found: Any = client.CustomObjectsApi(kube_api).get_cluster_custom_object(CTB[0], version, CTB[1], name)
        except client.ApiException as exc:
            if exc.status == 404:
                continue
            raise
        return str(found["spec"]["trustBundle"])
    return None


def _istiod_secret(core: client.CoreV1Api, namespace: str) -> Any:
    try:
        return core.read_namespaced_secret("istiod-tls", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _serve(release: Release, rbac: list[dict], kube_plane, kube_api, mint_token, tmp_path: Path) -> ServerProcess:
    for doc in rbac:
        utils.create_from_dict(kube_api, doc)
    kubeconfig = kubeconfig_for_token(
        kube_plane, mint_token(release.namespace, release.name, audience=None), tmp_path / "k"
    )
    flags = chart_flags(release.docs)
    assert "--cluster-duties=true" in flags and f"--leader-election-name={release.lease_name}" in flags
    return start_server([*flags, f"--local-ca-dir={tmp_path / 'ca'}", f"--kubeconfig={kubeconfig}"], tmp_path / "s.log")


def test_under_the_charts_rbac_meshsigner_leads_and_distributes_the_roots(
    release, kube_plane, kube_api, make_namespace, mint_token, wait_for, tmp_path: Path
):
    assert {doc["kind"] for doc in release.rbac} == RBAC_KINDS
    server = _serve(release, release.rbac, kube_plane, kube_api, mint_token, tmp_path)
    try:
        wait_for(lambda: server.metric("meshsigner_leader") == 1, timeout=30, what="meshsigner leads")
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(release.lease_name, release.lease_namespace)
        assert lease.spec is not None
        holder = lease.spec.holder_identity
        assert holder and holder in server.log(), "the Lease names this process as its holder"
        core = client.CoreV1Api(kube_api)
        fresh = make_namespace("dist", labels={release.label: "yes"})
        roots = (tmp_path / "ca" / "root-cert.pem").read_text()
        wait_for(lambda: _root_config_map(core, fresh) == roots, timeout=30, what="istio-ca-root-cert written")
        wait_for(lambda: _bundle(kube_api, release.bundle) == roots, timeout=30, what="ClusterTrustBundle written")
        secret = wait_for(lambda: _istiod_secret(core, release.istio_namespace), timeout=30, what="istiod-tls written")
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"]))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [f"istiod.{release.istio_namespace}.svc"]
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey), "the chart's istiod key values reach it"
        unselected = make_namespace("dist")
        log = server.log()
        # nothing was refused for want of a permission along the way
        assert '"status": "403"' not in log and "Forbidden" not in log, log[-3000:]
        assert _root_config_map(core, unselected) is None, "outside the selector nothing is written"
    finally:
        assert server.stop() == 0


def test_without_the_lease_rules_meshsigner_serves_logs_the_403_and_distributes_nothing(
    release, kube_plane, kube_api, make_namespace, make_service_account, mint_token, wait_for, tmp_path: Path
):
    rbac = _without(release.rbac, "coordination.k8s.io", "leases")
    server = _serve(release, rbac, kube_plane, kube_api, mint_token, tmp_path)
    try:
        core = client.CoreV1Api(kube_api)
        fresh = make_namespace("dist", labels={release.label: "yes"})
        # three campaigns in a row refused (one per retry period): the elector keeps trying, the process keeps running
        wait_for(
            lambda: metric_sum(server, "meshsigner_kube_api_requests_total", resource="leases", code="403") >= 3,
            timeout=30,
            what="three Lease reads refused",
        )
        log = server.log()
        assert "leases" in log and "403" in log, log[-3000:]
        assert server.metric("meshsigner_leader") == 0
        assert _root_config_map(core, fresh) is None, "no leader, no root ConfigMap"
        assert _istiod_secret(core, release.istio_namespace) is None and _bundle(kube_api, release.bundle) is None
        # still serving: a workload gets its certificate from this replica
        workload_ns = make_namespace("app")
        make_service_account(workload_ns, "web")
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        own = f"spiffe://cluster.local/ns/{workload_ns}/sa/web"
        code, chain, details = create(stub, make_csr([own]), mint_token(workload_ns, "web"))
        assert code is grpc.StatusCode.OK and len(chain) >= 2, details
        assert server.ready() and _root_config_map(core, fresh) is None
    finally:
        assert server.stop() == 0
