"""ztunnel impersonation (ambient mode) on the real plane: node authorization from meshsigner's pod watch.

A ztunnel service account in an istio-system namespace with a pod on node A, calling with a pod-bound token; a
workload ``orders/web`` with a pod on node A; ``payments/api`` only on node B. Pods are created with
``spec.nodeName`` set (the plane has no scheduler or kubelet: they stay Pending, which counts as live), and phases
are changed through the status subresource. One serve process (local CA, TokenReview) serves the module.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from kubernetes import client

from proto.istio_ca_pb2_grpc import IstioCertificateServiceStub
from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.processes import ServerProcess, readyz, start_server

TD = "cluster.local"


def spiffe(namespace: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{namespace}/sa/{sa}"


@dataclass
class Mesh:
    core: client.CoreV1Api
    ztunnel_ns: str
    orders: str
    payments: str
    node_a: str
    node_b: str
    ztunnel_token: str  # bound to the ztunnel pod on node A

    def pod(self, namespace: str, sa: str, node: str, name: str | None = None) -> client.V1Pod:
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name or f"{sa}-{secrets.token_hex(3)}"),
            spec=client.V1PodSpec(
                node_name=node,
                service_account_name=sa,
                automount_service_account_token=False,
                containers=[client.V1Container(name="main", image="example.invalid/none:1")],
            ),
        )
        return self.core.create_namespaced_pod(namespace, body)


def name_of(pod: client.V1Pod) -> str:
    assert pod.metadata is not None and pod.metadata.name is not None
    return str(pod.metadata.name)


def uid_of(pod: client.V1Pod) -> str:
    assert pod.metadata is not None and pod.metadata.uid is not None
    return str(pod.metadata.uid)


def _service_accounts(make_service_account, namespace: str, *names: str) -> None:
    for name in names:
        make_service_account(namespace, name)


@pytest.fixture(scope="module")
def mesh(kube_api, make_namespace, make_service_account, mint_token) -> Mesh:
    core = client.CoreV1Api(kube_api)
    suffix = secrets.token_hex(3)
    m = Mesh(core, make_namespace("istio-system"), make_namespace("orders"), make_namespace("payments"),
             f"node-a-{suffix}", f"node-b-{suffix}", "")  # fmt: skip
    _service_accounts(make_service_account, m.ztunnel_ns, "ztunnel", "intruder")
    _service_accounts(make_service_account, m.orders, "web", "batch")
    _service_accounts(make_service_account, m.payments, "api", "late")
    zt = m.pod(m.ztunnel_ns, "ztunnel", m.node_a, name="ztunnel-a")
    m.pod(m.orders, "web", m.node_a)
    m.pod(m.payments, "api", m.node_b)
    bound = {"kind": "Pod", "name": name_of(zt), "uid": uid_of(zt)}
    m.ztunnel_token = mint_token(m.ztunnel_ns, "ztunnel", bound_object=bound)
    return m


@pytest.fixture(scope="module")
def server(kube_plane, mesh: Mesh, tmp_path_factory) -> Iterator[tuple[ServerProcess, IstioCertificateServiceStub]]:
    tmp = tmp_path_factory.mktemp("impersonation")
    process = start_server(
        [
            "--signer=local",
            f"--local-ca-dir={tmp / 'ca'}",
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--ca-trusted-node-accounts={mesh.ztunnel_ns}/ztunnel",
            "--token-review-cache-duration=0s",
        ],
        tmp / "serve.log",
    )
    try:
        yield process, process.stub((tmp / "ca" / "root-cert.pem").read_bytes())
    finally:
        process.stop()


def impersonate(stub, token: str, identity: str, csr_uri: str | None = None) -> tuple[grpc.StatusCode, list[str], str]:
    csr = make_csr([csr_uri or identity])
    return create(stub, csr, token, metadata_fields={"ImpersonatedIdentity": identity})


def eventually(stub, token: str, identity: str, want: grpc.StatusCode, other: grpc.StatusCode) -> None:
    """Poll until the answer is ``want``; until then it must be ``other`` (nothing else, never an early allow)."""
    deadline = time.monotonic() + 15
    while (code := impersonate(stub, token, identity)[0]) is not want:
        assert code is other, code
        assert time.monotonic() < deadline, f"still {code} after 15 s"
        time.sleep(0.1)


def test_impersonating_a_pod_on_the_callers_node_issues_the_workloads_identity(server, mesh: Mesh) -> None:
    process, stub = server
    code, chain, details = impersonate(stub, mesh.ztunnel_token, spiffe(mesh.orders, "web"))
    assert code is grpc.StatusCode.OK, details
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe(mesh.orders, "web")]
    assert len(chain) >= 2  # leaf, ..., roots
    assert mesh.ztunnel_token not in process.log()


def test_off_node_workload_is_denied(server, mesh: Mesh) -> None:
    code, chain, details = impersonate(server[1], mesh.ztunnel_token, spiffe(mesh.payments, "api"))
    assert (code, chain) == (grpc.StatusCode.PERMISSION_DENIED, [])
    assert "IMPERSONATION_OFF_NODE" in details
    code, _, details = impersonate(server[1], mesh.ztunnel_token, spiffe(mesh.orders, "nobody"))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "IMPERSONATION_OFF_NODE" in details


def test_untrusted_caller_is_denied_even_with_a_pod_on_the_node(server, mesh: Mesh, mint_token) -> None:
    pod = mesh.pod(mesh.ztunnel_ns, "intruder", mesh.node_a)
    token = mint_token(mesh.ztunnel_ns, "intruder", bound_object={"kind": "Pod", "name": name_of(pod),
                                                                  "uid": uid_of(pod)})  # fmt: skip
    code, chain, details = impersonate(server[1], token, spiffe(mesh.orders, "web"))
    assert (code, chain) == (grpc.StatusCode.PERMISSION_DENIED, [])
    assert "IMPERSONATION_NOT_ALLOWED" in details


def test_unbound_ztunnel_token_is_denied(server, mesh: Mesh, mint_token) -> None:
    code, chain, details = impersonate(server[1], mint_token(mesh.ztunnel_ns, "ztunnel"), spiffe(mesh.orders, "web"))
    assert (code, chain) == (grpc.StatusCode.PERMISSION_DENIED, [])
    assert "IMPERSONATION_UNBOUND_TOKEN" in details


def test_csr_uri_other_than_the_impersonated_identity_is_denied(server, mesh: Mesh) -> None:
    for uri in (spiffe(mesh.payments, "api"), spiffe(mesh.ztunnel_ns, "ztunnel"), spiffe(mesh.orders, "batch")):
        code, chain, _ = impersonate(server[1], mesh.ztunnel_token, spiffe(mesh.orders, "web"), csr_uri=uri)
        assert (code, chain) == (grpc.StatusCode.PERMISSION_DENIED, []), uri


def test_malformed_or_foreign_impersonated_identity(server, mesh: Mesh) -> None:
    stub, token = server[1], mesh.ztunnel_token
    for bad in (f"spiffe://{TD}/ns/{mesh.orders}/sa/web/x", f"spiffe://{TD}/ns//sa/web", "http://x/ns/a/sa/b"):
        assert impersonate(stub, token, bad, csr_uri=spiffe(mesh.orders, "web"))[0] is grpc.StatusCode.INVALID_ARGUMENT
    foreign = f"spiffe://other.td/ns/{mesh.orders}/sa/web"
    assert impersonate(stub, token, foreign)[0] is grpc.StatusCode.PERMISSION_DENIED


def test_finished_workload_pod_no_longer_counts(server, mesh: Mesh) -> None:
    stub, identity = server[1], spiffe(mesh.orders, "batch")
    pod = mesh.pod(mesh.orders, "batch", mesh.node_a)
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)
    mesh.core.patch_namespaced_pod_status(name_of(pod), mesh.orders, {"status": {"phase": "Running"}})
    assert impersonate(stub, mesh.ztunnel_token, identity)[0] is grpc.StatusCode.OK
    mesh.core.patch_namespaced_pod_status(name_of(pod), mesh.orders, {"status": {"phase": "Succeeded"}})
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)
    failed = mesh.pod(mesh.orders, "batch", mesh.node_a)
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)
    mesh.core.patch_namespaced_pod_status(name_of(failed), mesh.orders, {"status": {"phase": "Failed"}})
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)


def test_pod_arriving_on_the_node_later_is_allowed_without_restart(server, mesh: Mesh) -> None:
    stub, identity = server[1], spiffe(mesh.payments, "late")
    mesh.pod(mesh.payments, "late", mesh.node_b)
    assert impersonate(stub, mesh.ztunnel_token, identity)[0] is grpc.StatusCode.PERMISSION_DENIED
    started = time.monotonic()
    pod = mesh.pod(mesh.payments, "late", mesh.node_a)
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)
    assert time.monotonic() - started < 5
    mesh.core.delete_namespaced_pod(name_of(pod), mesh.payments, grace_period_seconds=0)
    eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)


def test_recreated_caller_pod_needs_its_own_token(server, mesh: Mesh, mint_token) -> None:
    """A token of a recreated caller pod (same name, new UID) works as soon as the watch has the new pod. A token
    bound to the deleted incarnation may still pass the TokenReview for a while (the API server caches token
    authentications), while meshsigner's cache holds the new UID → UNAVAILABLE (UID mismatch, retryable), never OK;
    later the review rejects it (UNAUTHENTICATED)."""
    name = f"ztunnel-r-{secrets.token_hex(2)}"
    old = mesh.pod(mesh.ztunnel_ns, "ztunnel", mesh.node_a, name=name)
    old_token = mint_token(mesh.ztunnel_ns, "ztunnel", bound_object={"kind": "Pod", "name": name,
                                                                      "uid": uid_of(old)})  # fmt: skip
    stub, identity = server[1], spiffe(mesh.orders, "web")
    eventually(stub, old_token, identity, grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    mesh.core.delete_namespaced_pod(name, mesh.ztunnel_ns, grace_period_seconds=0)
    new = mesh.pod(mesh.ztunnel_ns, "ztunnel", mesh.node_a, name=name)
    new_token = mint_token(mesh.ztunnel_ns, "ztunnel", bound_object={"kind": "Pod", "name": name,
                                                                      "uid": uid_of(new)})  # fmt: skip
    eventually(stub, new_token, identity, grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    # the API server caches successful token authentications for 10 s: within that window the old token still
    # authenticates, and only the UID check stands between it and a certificate
    code, chain, details = impersonate(stub, old_token, identity)
    assert chain == []
    assert (code, "IMPERSONATION_CALLER_POD_UID_MISMATCH" in details) in {
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.UNAUTHENTICATED, False),
    }, (code, details)


def _kubeconfig_for(kube_plane, token: str, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "p", "cluster": {"server": kube_plane.api_server_url,
                                                "certificate-authority": kube_plane.ca_cert_path}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "p", "user": "u"}}],
    }))  # fmt: skip
    return path


def test_without_pod_rbac_impersonation_is_unavailable_then_works_once_granted(
    kube_plane, kube_api, mesh: Mesh, make_service_account, mint_token, tmp_path: Path
):
    """D7: until the pod list arrives, impersonation is UNAVAILABLE (never an allow, never PERMISSION_DENIED) and
    /readyz says why. The RBAC meshsigner needs for it is exactly ``pods`` list/watch cluster-wide (plus
    ``tokenreviews`` create for the authenticator)."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    sa = make_service_account(mesh.ztunnel_ns, "meshsigner")
    name = f"meshsigner-test-{secrets.token_hex(3)}"
    subject = client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=mesh.ztunnel_ns)

    def grant(suffix: str, rules: list[client.V1PolicyRule]) -> None:
        rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name + suffix), rules=rules))
        rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name + suffix), subjects=[subject],
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name + suffix),
        ))  # fmt: skip

    grant("-authn", [client.V1PolicyRule(api_groups=["authentication.k8s.io"], resources=["tokenreviews"],
                                         verbs=["create"])])  # fmt: skip
    kubeconfig = _kubeconfig_for(kube_plane, mint_token(mesh.ztunnel_ns, sa, audience=None), tmp_path / "kubeconfig")
    process = start_server(
        [
            "--signer=local",
            f"--local-ca-dir={tmp_path / 'ca'}",
            "--authenticator=tokenreview",
            f"--kubeconfig={kubeconfig}",
            f"--ca-trusted-node-accounts={mesh.ztunnel_ns}/ztunnel",
        ],
        tmp_path / "serve.log",
        wait=False,
    )
    try:
        deadline = time.monotonic() + 60  # a bound, not a wait: loaded CI machines are slow
        while not (tmp_path / "ca" / "root-cert.pem").exists() or "pods not ready" not in _readyz(process):
            assert process.process.poll() is None, process.log()
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        stub = process.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        identity = spiffe(mesh.orders, "web")
        deadline = time.monotonic() + 60  # a bound, not a wait: loaded CI machines are slow
        while (result := impersonate(stub, mesh.ztunnel_token, identity))[0] is grpc.StatusCode.UNAVAILABLE:
            if "IMPERSONATION_PODS_NOT_SYNCED" in result[2]:
                break
            assert time.monotonic() < deadline, result
            time.sleep(0.1)  # the listener may not be up yet
        assert result[0] is grpc.StatusCode.UNAVAILABLE and "IMPERSONATION_PODS_NOT_SYNCED" in result[2], result
        assert readyz(process.readiness_port)[0] == 503
        grant("-pods", [client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list", "watch"])])
        eventually(stub, mesh.ztunnel_token, identity, grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        assert readyz(process.readiness_port)[0] == 200
    finally:
        process.stop()
        for suffix in ("-authn", "-pods"):
            for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
                with contextlib.suppress(client.ApiException):
                    delete(name + suffix)


def _readyz(process: ServerProcess) -> str:
    try:
        return readyz(process.readiness_port)[1]
    except OSError:
        return ""
