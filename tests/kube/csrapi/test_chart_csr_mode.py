"""The chart's Kubernetes CSR API features under exactly the RBAC it renders, with its own arguments, on the real
plane: ``app.signer: kubernetes-csr`` passes meshsigner's start-up permission check, issues through cert-manager's
CSR signer and leaves no CSR; without the chart's ``signers`` rule meshsigner refuses to start naming it; the audit
mirror (local signer) writes its record with the mirror's rules only. No request is refused for want of a permission."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kubernetes import client, utils

from tests.e2e.calls import create
from tests.helm.test_chart import render
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.kube.certmanager.test_chart_rbac import RBAC_KINDS
from tests.kube.certmanager.test_chart_rbac_offline_auth import chart_flags
from tests.kube.certmanager.test_chart_rbac_removed import _without
from tests.support.csr_builder import make_csr
from tests.support.processes import ServerProcess, start_server

POD_PATHS = ("--root-ca-file=",)  # the pod's mounted root bundle: the test passes its own file


class Release:
    """The chart rendered with a unique (cluster-scoped) name in its own namespace, cluster duties off (their rules:
    tests/kube/test_chart_cluster_duties.py); ``serve`` applies the given RBAC and starts meshsigner as the chart's
    ServiceAccount."""

    def __init__(self, helm: str, make_namespace, *values: str) -> None:
        self.namespace = make_namespace("release")
        self.name = f"meshsigner-csr-{secrets.token_hex(3)}"
        self.docs = render(
            helm, f"nameOverride={self.name}", "app.logFormat=json", "app.controller.clusterDuties=false", *values,
            namespace=self.namespace,
        )  # fmt: skip
        self.rbac = [doc for doc in self.docs if doc["kind"] in RBAC_KINDS]

    def serve(self, rbac: list[dict], kube_plane, kube_api, mint_token, tmp_path: Path, *extra: str,
              wait: bool = True) -> ServerProcess:  # fmt: skip
        for doc in rbac:
            utils.create_from_dict(kube_api, doc)
        token = mint_token(self.namespace, self.name, audience=None)
        kubeconfig = kubeconfig_for_token(kube_plane, token, tmp_path / "sa.kubeconfig")
        flags = [flag for flag in chart_flags(self.docs) if not flag.startswith(POD_PATHS)]
        return start_server([*flags, *extra, f"--kubeconfig={kubeconfig}"], tmp_path / "serve.log", wait=wait)


@pytest.fixture
def release_factory(helm, kube_api, make_namespace) -> Iterator:
    made: list[Release] = []

    def make(*values: str) -> Release:
        made.append(Release(helm, make_namespace, *values))
        return made[-1]

    yield make
    rbac_api = client.RbacAuthorizationV1Api(kube_api)
    for release in made:
        for delete in (rbac_api.delete_cluster_role_binding, rbac_api.delete_cluster_role):
            with contextlib.suppress(client.ApiException):
                delete(release.name)


def _csr_mode(release_factory, issuer) -> Release:
    return release_factory(
        "app.signer=kubernetes-csr", f"app.signerName={issuer.signer_name}", "app.tls.rootCAFile=/var/run/roots/ca.pem"
    )


def _no_forbidden(server: ServerProcess) -> None:
    log = server.log()
    assert '"status": "403"' not in log and "Forbidden" not in log and "missing permission" not in log, log[-3000:]


def test_kubernetes_csr_mode_issues_under_the_charts_rbac_and_leaves_nothing(
    release_factory, ca_cluster_issuer, kube_plane, kube_api, make_namespace, make_service_account, mint_token,
    our_csrs, wait_for, tmp_path: Path,
):  # fmt: skip
    release = _csr_mode(release_factory, ca_cluster_issuer)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca_cluster_issuer.ca_cert_pem)
    server = release.serve(release.rbac, kube_plane, kube_api, mint_token, tmp_path, f"--root-ca-file={roots}")
    try:
        workload_ns = make_namespace("app")
        make_service_account(workload_ns, "web")
        uri = f"spiffe://cluster.local/ns/{workload_ns}/sa/web"
        code, chain, details = create(server.stub(roots.read_bytes()), make_csr([uri]), mint_token(workload_ns, "web"),
                                      validity=3600)  # fmt: skip
        assert code is grpc.StatusCode.OK and len(chain) >= 2, details
        wait_for(lambda: our_csrs(ca_cluster_issuer.signer_name) == [], timeout=20, what="the CSRs deleted")
        _no_forbidden(server)
    finally:
        assert server.stop() == 0


def test_without_the_charts_signers_rule_meshsigner_refuses_to_start_naming_it(
    release_factory, ca_cluster_issuer, kube_plane, kube_api, mint_token, tmp_path: Path
):
    release = _csr_mode(release_factory, ca_cluster_issuer)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca_cluster_issuer.ca_cert_pem)
    rbac = _without(release.rbac, "certificates.k8s.io", "signers")
    server = release.serve(rbac, kube_plane, kube_api, mint_token, tmp_path, f"--root-ca-file={roots}", wait=False)
    assert server.process.wait(60) == 2
    log = server.log()
    assert f"missing permission: approve signers/{ca_cluster_issuer.signer_name}" in log, log[-3000:]
    assert "missing permission: create" not in log and "missing permission: update" not in log, "the rest is granted"


def test_the_audit_mirror_writes_its_record_under_the_charts_rbac(
    release_factory, kube_plane, kube_api, make_namespace, make_service_account, mint_token, our_csrs, wait_for,
    tmp_path: Path,
):  # fmt: skip
    mirror_signer = f"meshsigner.io/audit-{secrets.token_hex(3)}"  # the plane is shared: this test's records only
    release = release_factory("app.signer=local", "app.mirror.enabled=true", f"app.mirror.signerName={mirror_signer}")
    server = release.serve(
        release.rbac, kube_plane, kube_api, mint_token, tmp_path, f"--local-ca-dir={tmp_path / 'ca'}"
    )
    try:
        workload_ns = make_namespace("app")
        make_service_account(workload_ns, "web")
        uri = f"spiffe://cluster.local/ns/{workload_ns}/sa/web"
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        code, chain, details = create(stub, make_csr([uri]), mint_token(workload_ns, "web"))
        assert code is grpc.StatusCode.OK and len(chain) >= 2, details
        audit = "meshsigner.io/purpose=audit"
        records = wait_for(lambda: [c for c in our_csrs(mirror_signer, audit) if c.status and c.status.certificate],
                           timeout=30, what="the audit record with its certificate")  # fmt: skip
        (record,) = records
        assert record.metadata.labels["meshsigner.io/decision"] == "allowed"
        assert [c.type for c in record.status.conditions or []] == ["Approved"]
        assert uri in record.metadata.annotations["meshsigner.io/requested-identities"]
        _no_forbidden(server)
    finally:
        assert server.stop() == 0
        certificates = client.CertificatesV1Api(kube_api)
        for record in our_csrs(mirror_signer, "meshsigner.io/purpose=audit"):  # (kept an hour otherwise)
            with contextlib.suppress(client.ApiException):
                certificates.delete_certificate_signing_request(record.metadata.name)
