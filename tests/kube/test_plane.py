"""The test control plane is real: a pinned kube-apiserver with TokenRequest/TokenReview, RBAC, and a
cert-manager controller that signs approved CertificateRequests and Kubernetes CSRs."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException

CM = ("cert-manager.io", "v1")


def _pinned() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[1] / "cluster" / "versions.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_apiserver_is_the_pinned_version(kube_plane, kube_api):
    info = client.VersionApi(kube_api).get_code()
    if kube_plane.external:
        pytest.skip("external cluster: version not pinned")
    assert info.git_version == _pinned()["KUBE_VERSION"]
    assert info.git_version == kube_plane.versions["kube-apiserver"]


def test_cert_manager_crds_established(kube_api):
    ext = client.ApiextensionsV1Api(kube_api)
    for name in ("certificaterequests", "certificates", "issuers", "clusterissuers"):
        crd = ext.read_custom_resource_definition(f"{name}.cert-manager.io")
        conds = {c.type: c.status for c in crd.status.conditions}
        assert conds.get("Established") == "True", name


def _token_review(kube_api, token: str, audiences: list[str]):
    review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
    return client.AuthenticationV1Api(kube_api).create_token_review(review).status


def test_token_review_of_minted_token(kube_api, make_namespace, make_service_account, mint_token):
    ns = make_namespace("tokens")
    sa = make_service_account(ns, "workload")
    token = mint_token(ns, sa)  # audience istio-ca

    status = _token_review(kube_api, token, ["istio-ca"])
    assert status.authenticated is True, status.error
    assert status.audiences == ["istio-ca"]
    assert status.user.username == f"system:serviceaccount:{ns}:{sa}"
    assert "system:serviceaccounts" in status.user.groups
    assert f"system:serviceaccounts:{ns}" in status.user.groups

    # The JWT really carries the audience and the plane's issuer.
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["aud"] == ["istio-ca"]
    assert payload["sub"] == f"system:serviceaccount:{ns}:{sa}"

    wrong = _token_review(kube_api, token, ["some-other-audience"])
    assert wrong.authenticated is not True
    assert wrong.error


def test_token_review_rejects_token_of_deleted_service_account(
    kube_api, make_namespace, make_service_account, mint_token, wait_for
):
    ns = make_namespace("tokens")
    sa = make_service_account(ns)
    token = mint_token(ns, sa)
    assert _token_review(kube_api, token, ["istio-ca"]).authenticated is True
    client.CoreV1Api(kube_api).delete_namespaced_service_account(sa, ns)
    # The authenticator looks the ServiceAccount up through the apiserver's informer cache: allow it to catch up.
    status = wait_for(
        lambda: (s := _token_review(kube_api, token, ["istio-ca"])).authenticated is not True and s,
        timeout=30,
        what="token of a deleted ServiceAccount to be rejected",
    )
    assert "not found" in (status.error or "") or "deleted" in (status.error or ""), status.error


def _client_for_token(kube_plane, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = kube_plane.api_server_url
    cfg.ssl_ca_cert = kube_plane.ca_cert_path
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


def test_rbac_denies_unprivileged_service_account(
    kube_plane, kube_api, make_namespace, make_service_account, mint_token
):
    ns = make_namespace("rbac")
    sa = make_service_account(ns, "nobody")
    # A token for the API server's own audience, so the SA can call the API at all.
    token = mint_token(ns, sa, audience=None)
    with _client_for_token(kube_plane, token) as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as denied:
            core.list_namespaced_secret(ns)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{ns}:{sa}" in denied.value.body

        # Grant configmaps (only) and show the same token now works there, still not on secrets.
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            ns,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-configmaps"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            ns,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="read-configmaps"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=ns)],
            ),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                core.list_namespaced_config_map(ns)
                break
            except ApiException as e:
                if e.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with pytest.raises(ApiException) as still:
            core.list_namespaced_secret(ns)
        assert still.value.status == 403

    # An istio-ca audience token is not accepted by the API server itself.
    with _client_for_token(kube_plane, mint_token(ns, sa)) as api, pytest.raises(ApiException) as unauth:
        client.CoreV1Api(api).list_namespaced_config_map(ns)
    assert unauth.value.status == 401


def _cr_body(name: str, csr_pem: bytes, issuer_ref: dict, duration: str = "1h") -> dict:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64.b64encode(csr_pem).decode(),
            "issuerRef": issuer_ref,
            "duration": duration,
            "usages": ["digital signature", "key encipherment", "client auth", "server auth"],
        },
    }


def _cr_conditions(cr: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (cr.get("status") or {}).get("conditions") or []}


def test_certificate_request_signed_after_test_approves(
    kube_api, make_namespace, ca_cluster_issuer, approve_certificate_request, wait_for, pki
):
    ns = make_namespace("cr")
    co = client.CustomObjectsApi(kube_api)
    spiffe = f"spiffe://cluster.local/ns/{ns}/sa/workload"
    csr_pem, key = pki.make_csr(uris=(spiffe,))
    co.create_namespaced_custom_object(
        *CM, ns, "certificaterequests", _cr_body("wl", csr_pem, ca_cluster_issuer.issuer_ref)
    )

    def get():
        return co.get_namespaced_custom_object(*CM, ns, "certificaterequests", "wl")

    # Nobody approves but the test: the auto-approver does not run, so the request stays unsigned.
    time.sleep(3)
    cr = get()
    assert "Approved" not in _cr_conditions(cr)
    assert not (cr.get("status") or {}).get("certificate")

    approve_certificate_request(ns, "wl", reason="MeshsignerTest", message="approved by test_plane")

    cr = wait_for(
        lambda: (c := get()) and (c.get("status") or {}).get("certificate") and c,
        timeout=60,
        what="CertificateRequest signed",
    )
    conds = _cr_conditions(cr)
    assert conds["Approved"]["reason"] == "MeshsignerTest"
    assert conds["Ready"]["status"] == "True", conds["Ready"]
    leaf = x509.load_pem_x509_certificate(base64.b64decode(cr["status"]["certificate"]))
    pki.verify_issued_by(leaf, ca_cluster_issuer.ca.cert)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert base64.b64decode(cr["status"]["ca"]) == ca_cluster_issuer.ca_cert_pem


def test_certificate_request_denied_is_not_signed(
    kube_api, make_namespace, ca_cluster_issuer, approve_certificate_request, wait_for, pki
):
    ns = make_namespace("cr")
    co = client.CustomObjectsApi(kube_api)
    csr_pem, _ = pki.make_csr(uris=(f"spiffe://cluster.local/ns/{ns}/sa/x",))
    co.create_namespaced_custom_object(
        *CM, ns, "certificaterequests", _cr_body("denied", csr_pem, ca_cluster_issuer.issuer_ref)
    )
    approve_certificate_request(ns, "denied", approve=False, reason="Nope", message="denied by the test")

    def failed():
        cr = co.get_namespaced_custom_object(*CM, ns, "certificaterequests", "denied")
        ready = _cr_conditions(cr).get("Ready")
        return cr if ready and ready["reason"] == "Denied" else None

    cr = wait_for(failed, timeout=60, what="CertificateRequest marked Denied by cert-manager")
    assert not cr["status"].get("certificate")


def test_namespaced_ca_issuer_signs(
    kube_api, make_namespace, make_ca_issuer, approve_certificate_request, wait_for, pki
):
    ns = make_namespace("issuer")
    issuer = make_ca_issuer(ns)
    co = client.CustomObjectsApi(kube_api)
    csr_pem, _ = pki.make_csr("ns-issuer-leaf", dns=("leaf.example.test",))
    co.create_namespaced_custom_object(*CM, ns, "certificaterequests", _cr_body("leaf", csr_pem, issuer.issuer_ref))
    approve_certificate_request(ns, "leaf")
    cr = wait_for(
        lambda: (
            (c := co.get_namespaced_custom_object(*CM, ns, "certificaterequests", "leaf"))
            and (c.get("status") or {}).get("certificate")
            and c
        ),
        timeout=60,
        what="CertificateRequest signed by namespaced Issuer",
    )
    leaf = x509.load_pem_x509_certificate(base64.b64decode(cr["status"]["certificate"]))
    pki.verify_issued_by(leaf, issuer.ca.cert)


def _create_csr(kube_api, name: str, signer_name: str, csr_pem: bytes, seconds: int = 3600):
    body = client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(csr_pem).decode(),
            signer_name=signer_name,
            expiration_seconds=seconds,
            usages=["digital signature", "client auth"],
        ),
    )
    return client.CertificatesV1Api(kube_api).create_certificate_signing_request(body)


def _csr_cert(kube_api, name: str) -> bytes | None:
    csr = client.CertificatesV1Api(kube_api).read_certificate_signing_request(name)
    cert = csr.status.certificate if csr.status else None
    if not cert:
        return None
    return base64.b64decode(cert) if isinstance(cert, str) else cert


@pytest.fixture
def csr_name(kube_api):
    name = f"meshsigner-test-{secrets.token_hex(4)}"
    yield name
    with contextlib.suppress(ApiException):
        client.CertificatesV1Api(kube_api).delete_certificate_signing_request(name)


def test_kubernetes_csr_signed_by_cluster_issuer_after_approval(
    kube_api, ca_cluster_issuer, approve_csr, wait_for, pki, csr_name
):
    csr_pem, key = pki.make_csr("csr-leaf", uris=("spiffe://cluster.local/ns/default/sa/csr",))
    _create_csr(kube_api, csr_name, ca_cluster_issuer.signer_name, csr_pem)

    time.sleep(3)
    assert _csr_cert(kube_api, csr_name) is None, "signed without approval"

    approve_csr(csr_name)
    pem = wait_for(lambda: _csr_cert(kube_api, csr_name), timeout=60, what="CSR signed by cert-manager")
    chain = pki.load_pem_chain(pem)
    pki.verify_issued_by(chain[0], ca_cluster_issuer.ca.cert)
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()
    lifetime = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert lifetime.total_seconds() <= 3600 + 600


def test_kubernetes_csr_for_namespaced_issuer(
    kube_api, make_namespace, make_ca_issuer, approve_csr, wait_for, pki, csr_name
):
    ns = make_namespace("csr")
    issuer = make_ca_issuer(ns)
    assert issuer.signer_name == f"issuers.cert-manager.io/{ns}.{issuer.name}"
    csr_pem, _ = pki.make_csr("ns-csr-leaf")
    _create_csr(kube_api, csr_name, issuer.signer_name, csr_pem)
    approve_csr(csr_name)
    pem = wait_for(lambda: _csr_cert(kube_api, csr_name), timeout=60, what="CSR signed by namespaced Issuer")
    pki.verify_issued_by(pki.load_pem_chain(pem)[0], issuer.ca.cert)


def test_apiserver_restart_keeps_state_and_keys(kube_plane, kube_api, make_namespace, make_service_account, mint_token):
    """The fault-test helpers: kube-apiserver restarts with the same port, etcd data and signing keys."""
    if kube_plane.external:
        pytest.skip("external cluster: no process control")
    ns = make_namespace("restart")
    sa = make_service_account(ns)
    token = mint_token(ns, sa)
    kube_plane.stop_apiserver()
    with pytest.raises((urllib3.exceptions.HTTPError, OSError)):  # connection refused, as urllib3 reports it
        client.CoreV1Api(kube_api).read_namespace(ns, _request_timeout=3)
    kube_plane.start_apiserver()
    assert client.CoreV1Api(kube_api).read_namespace(ns).metadata.name == ns
    status = _token_review(kube_api, token, ["istio-ca"])
    assert status.authenticated is True, status.error


def test_pod_bound_token_carries_pod_identity(kube_api, make_namespace, make_service_account, mint_token):
    """mint_token(bound_object=...) binds a token to a Pod; TokenReview then reports the pod (as Istio reads it)."""
    ns = make_namespace("bound")
    sa = make_service_account(ns, "workload")
    pod = client.CoreV1Api(kube_api).create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="wl"),
            spec=client.V1PodSpec(
                service_account_name=sa,
                containers=[client.V1Container(name="c", image="example.invalid/none:0")],
            ),
        ),
    )  # stays Pending: there is no scheduler or kubelet
    token = mint_token(ns, sa, bound_object={"kind": "Pod", "name": "wl", "uid": pod.metadata.uid})
    status = _token_review(kube_api, token, ["istio-ca"])
    assert status.authenticated is True, status.error
    assert status.user.extra["authentication.kubernetes.io/pod-name"] == ["wl"]
    assert status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]
