"""``--signer kubernetes-csr`` end to end on the real plane: a workload gets a chain signed through
certificates.k8s.io/v1 by cert-manager's CSR signer, rooted in the pinned root; a CSR denied by another approver
answers PERMISSION_DENIED; nothing is left behind; without the permission to approve, meshsigner refuses to start
and names the RBAC rule."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from kubernetes import client

from tests.e2e.calls import create
from tests.kube.certmanager.conftest import kubeconfig_for_token
from tests.support.csr_builder import make_csr
from tests.support.processes import start_server


def _workload(make_namespace, make_service_account, mint_token) -> tuple[str, str, str]:
    ns = make_namespace("csrapi")
    sa = make_service_account(ns, "web")
    uri = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
    return uri, make_csr([uri]), mint_token(ns, sa)


def _assert_chain_rooted(chain: list[str], uri: str, root_pem: bytes) -> None:
    certificates = [x509.load_pem_x509_certificate(element.encode()) for element in chain]
    leaf, root = certificates[0], certificates[-1]
    assert root == x509.load_pem_x509_certificate(root_pem), "the chain does not end in the pinned root"
    leaf.verify_directly_issued_by(root)  # the CA issuers sign leaves directly with the pinned root
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]


def _wait_no_csrs(our_csrs, signer_name: str, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while (left := our_csrs(signer_name)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def test_issued_through_a_cluster_issuer_and_deleted(
    ca_cluster_issuer, csr_signer, make_namespace, make_service_account, mint_token, our_csrs
):
    signer = csr_signer(ca_cluster_issuer)
    uri, csr, token = _workload(make_namespace, make_service_account, mint_token)
    code, chain, details = create(signer.stub(), csr, token, validity=3600)
    assert code is grpc.StatusCode.OK, details
    _assert_chain_rooted(chain, uri, ca_cluster_issuer.ca_cert_pem)
    assert _wait_no_csrs(our_csrs, ca_cluster_issuer.signer_name) == []


def test_issued_through_a_namespaced_issuer(
    make_ca_issuer, csr_signer, make_namespace, make_service_account, mint_token, our_csrs
):
    issuer = make_ca_issuer(make_namespace("issuer"))
    signer = csr_signer(issuer)
    uri, csr, token = _workload(make_namespace, make_service_account, mint_token)
    code, chain, details = create(signer.stub(), csr, token, validity=3600)
    assert code is grpc.StatusCode.OK, details
    _assert_chain_rooted(chain, uri, issuer.ca_cert_pem)
    assert _wait_no_csrs(our_csrs, issuer.signer_name) == []


def test_a_grant_under_the_api_minimum_is_refused_not_lengthened(
    ca_cluster_issuer, csr_signer, make_namespace, make_service_account, mint_token, our_csrs
):
    signer = csr_signer(ca_cluster_issuer)
    _, csr, token = _workload(make_namespace, make_service_account, mint_token)
    code, chain, details = create(signer.stub(), csr, token, validity=300)
    assert code is grpc.StatusCode.FAILED_PRECONDITION, details
    assert "LIFETIME_BELOW_CSR_API_MINIMUM" in details
    assert chain == []


def test_denied_by_another_approver_is_permission_denied(
    ca_cluster_issuer, csr_signer, csr_decider, make_namespace, make_service_account, mint_token, our_csrs
):
    _uri, csr, token = _workload(make_namespace, make_service_account, mint_token)

    def deny_the_workload(obj) -> str | None:
        purpose = obj.metadata.labels.get("meshsigner.io/purpose")
        return "deny" if purpose == "workload" else "approve"  # the serving certificate is approved

    csr_decider(ca_cluster_issuer.signer_name, deny_the_workload)
    signer = csr_signer(ca_cluster_issuer, "--approve-certificate-signing-requests=false")
    code, _chain, details = create(signer.stub(), csr, token, validity=3600)
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    assert "CERTIFICATE_SIGNING_REQUEST_DENIED" in details
    assert _wait_no_csrs(our_csrs, ca_cluster_issuer.signer_name) == []


def _service_account_kubeconfig(kube_api, kube_plane, make_namespace, make_service_account, mint_token, tmp_path):
    """A service account allowed to create/list/watch/delete CSRs and update their approval, but NOT to approve
    for any signer name."""
    ns = make_namespace("rbac")
    sa = make_service_account(ns, "meshsigner")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    name = f"csrapi-{ns}"
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=["certificates.k8s.io"],
                    resources=["certificatesigningrequests"],
                    verbs=["create", "get", "list", "watch", "delete"],
                ),
                client.V1PolicyRule(
                    api_groups=["certificates.k8s.io"],
                    resources=["certificatesigningrequests/approval"],
                    verbs=["update"],
                ),
                client.V1PolicyRule(api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]),
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=ns)],
        )
    )
    token = mint_token(ns, sa, audience=None)
    return kubeconfig_for_token(kube_plane, token, tmp_path / "sa.kubeconfig"), name


def test_refuses_to_start_without_approve_permission(
    kube_api, kube_plane, ca_cluster_issuer, make_namespace, make_service_account, mint_token, tmp_path: Path
):
    kubeconfig, role = _service_account_kubeconfig(
        kube_api, kube_plane, make_namespace, make_service_account, mint_token, tmp_path
    )
    root_file = tmp_path / "roots.pem"
    root_file.write_bytes(ca_cluster_issuer.ca_cert_pem)
    try:
        server = start_server(
            [
                "--signer=kubernetes-csr",
                f"--signer-name={ca_cluster_issuer.signer_name}",
                "--authenticator=tokenreview",
                f"--kubeconfig={kubeconfig}",
                f"--root-ca-file={root_file}",
            ],
            tmp_path / "serve.log",
            wait=False,
        )
        assert server.process.wait(60) == 2
        log = server.log()
        assert f"missing permission: approve signers/{ca_cluster_issuer.signer_name}" in log, log
        assert f'resources: ["signers"], resourceNames: ["{ca_cluster_issuer.signer_name}"], verbs: ["approve"]' in log
        assert "missing permission: create" not in log  # what it has is not reported missing
    finally:
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


@pytest.mark.parametrize("flag", ["--signer-name=", "--root-ca-file="])
def test_settings_refused_without_signer_name_or_roots(flag, tmp_path: Path, ca_cluster_issuer, kube_plane):
    root_file = tmp_path / "roots.pem"
    root_file.write_bytes(ca_cluster_issuer.ca_cert_pem)
    server = start_server(
        [
            "--signer=kubernetes-csr",
            f"--signer-name={ca_cluster_issuer.signer_name}",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--root-ca-file={root_file}",
            flag,
        ],
        tmp_path / "serve.log",
        wait=False,
    )
    assert server.process.wait(30) != 0
    assert flag.rstrip("=") in server.log()
