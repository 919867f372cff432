"""The cert-manager backend in-process against the real plane, for what a serve process cannot show: a request
cancelled (or whose create answer is lost) while its POST is inside the API client still leaves nothing behind;
serving keys are made off the event loop; an unpinned status.ca is verified before it is trusted; a refused delete
is not retried."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry

from bridge.cert_manager import CertManagerBackend
from bridge.errors import BackendUnavailable, IssuerFailed
from bridge.kube import KubeClient, KubeMetrics, KubeOptions, KubeUnavailable, Obj, Resource
from tests.kube.certmanager.conftest import CM, kubeconfig_for_token, list_requests, running_backend
from tests.support.signing_request import signing_request


@pytest.fixture
def kube(kube_plane) -> Iterator[KubeClient]:
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(CollectorRegistry()))
    yield seam
    seam.close()


def _outcome(backend: CertManagerBackend, outcome: str) -> float:
    registry = backend.registry  # type: ignore[attr-defined]
    labels = {"purpose": "workload", "outcome": outcome}
    return registry.get_sample_value("meshsigner_certificate_requests_total", labels) or 0.0


async def test_cancel_while_the_create_is_in_flight_deletes_the_object(
    kube_plane, kube_api, make_namespace, ca_cluster_issuer, tmp_path
):
    """The RPC is cancelled after the POST reached the API server but before its answer came back: the object
    exists, its UID was never seen, and it must still be deleted."""
    namespace = make_namespace("istio-system")
    posted, release = threading.Event(), threading.Event()

    class AnswerHeldBack(KubeClient):
        async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
            created = await super().create(resource, namespace, body)
            posted.set()
            await asyncio.to_thread(release.wait, 20)  # the answer is held back until the caller was cancelled
            return created

    kube = AnswerHeldBack(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(CollectorRegistry()))
    async with running_backend(kube, namespace, ca_cluster_issuer, ca_cluster_issuer.roots_file(tmp_path)) as backend:
        signing = asyncio.create_task(backend.sign(signing_request()))
        assert await asyncio.to_thread(posted.wait, 20), "the create never reached the API server"
        assert len(list_requests(kube_api, namespace)) == 1
        signing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await signing
        release.set()
        await backend.close()  # the pending deletes
    kube.close()
    assert list_requests(kube_api, namespace) == [], "the cancelled request's CertificateRequest was left behind"
    assert _outcome(backend, "cancelled") == 1.0


async def test_create_whose_answer_is_lost_is_deleted_by_name(
    kube_plane, kube_api, make_namespace, ca_cluster_issuer, tmp_path
):
    """The POST succeeded but its response timed out (KubeUnavailable): the request answers UNAVAILABLE and the
    object it made anyway is deleted by the name meshsigner chose."""
    namespace = make_namespace("istio-system")

    class AnswerLost(KubeClient):
        async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
            await super().create(resource, namespace, body)
            raise KubeUnavailable(0, "ReadTimeoutError: Read timed out.")  # what the seam makes of a lost answer

    kube = AnswerLost(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(CollectorRegistry()))
    async with running_backend(kube, namespace, ca_cluster_issuer, ca_cluster_issuer.roots_file(tmp_path)) as backend:
        with pytest.raises(BackendUnavailable) as failed:
            await backend.sign(signing_request())
        assert failed.value.reason == "CERTIFICATE_REQUEST_CREATE_FAILED"
        await backend.close()
    kube.close()
    assert list_requests(kube_api, namespace) == [], "the object of a lost create answer was left behind"


async def test_serving_key_is_generated_off_the_event_loop(
    kube, make_namespace, ca_cluster_issuer, tmp_path, monkeypatch
):
    """An RSA serving key takes long enough to stall every request on the loop: it is made in a worker thread."""
    namespace = make_namespace("istio-system")
    threads: list[int] = []
    original = rsa.generate_private_key

    def record(*args, **kwargs):
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(rsa, "generate_private_key", record)
    roots = ca_cluster_issuer.roots_file(tmp_path)
    async with running_backend(kube, namespace, ca_cluster_issuer, roots, approve=True) as backend:
        material = await backend.issue_serving_certificate(("meshsigner.test",), 3600, "RSA", 2048)
    assert threads and threading.get_ident() not in threads, "the serving key was generated on the event loop"
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    leaf = x509.load_pem_x509_certificates(material.chain_pem)[0]
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["meshsigner.test"]


def _sign_as_external_issuer(kube_api, namespace: str, ca, status_ca: dict[str, bytes], stop: threading.Event) -> None:
    """An external issuer (its group is not cert-manager's, so cert-manager leaves the objects alone): signs each
    meshsigner CertificateRequest with ``ca`` and reports ``status_ca["pem"]`` as its ``status.ca``."""
    co = client.CustomObjectsApi(kube_api)
    while not stop.wait(0.05):
        for cr in list_requests(kube_api, namespace):
            if (cr.get("status") or {}).get("certificate"):
                continue
            csr = x509.load_pem_x509_csr(base64.b64decode(cr["spec"]["request"]))
            now = datetime.now(UTC)
            leaf = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(ca.cert.subject)
                .public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + timedelta(hours=1))
                .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, True)
                .sign(ca.key, hashes.SHA256())
            )
            cr["status"] = {
                "certificate": base64.b64encode(leaf.public_bytes(serialization.Encoding.PEM)).decode(),
                "ca": base64.b64encode(status_ca["pem"]).decode(),
            }
            with contextlib.suppress(ApiException):
                co.replace_namespaced_custom_object_status(
                    *CM, namespace, "certificaterequests", cr["metadata"]["name"], cr
                )


async def test_unpinned_status_ca_is_adopted_only_after_it_verifies_the_chain(kube, kube_api, make_namespace, pki):
    """Trust on first use: a status.ca that did not issue the chain is refused and NOT adopted (it would otherwise
    become the mesh's root for every later request); one that did is adopted."""
    namespace = make_namespace("istio-system")
    signing_ca, other_ca = pki.make_ca("tofu-signing"), pki.make_ca("tofu-other")
    status_ca = {"pem": other_ca.cert_pem}
    stop = threading.Event()
    issuer_thread = threading.Thread(
        target=_sign_as_external_issuer, args=(kube_api, namespace, signing_ca, status_ca, stop), daemon=True
    )
    issuer_thread.start()
    external = SimpleNamespace(name="tofu", kind="TestIssuer", group="issuers.meshsigner.test")
    try:
        async with running_backend(kube, namespace, external, None) as backend:
            with pytest.raises(IssuerFailed) as refused:
                await backend.issue_serving_certificate(("meshsigner.test",), 3600, "ECDSA", 256)
            assert refused.value.reason == "CHAIN_NOT_TRUSTED"
            assert not backend.ready, "a status.ca that did not verify the chain was adopted as the mesh root"
            with pytest.raises(BackendUnavailable, match="NO_ROOTS"):
                await backend.sign(signing_request())

            status_ca["pem"] = signing_ca.cert_pem
            material = await backend.issue_serving_certificate(("meshsigner.test",), 3600, "ECDSA", 256)
            x509.load_pem_x509_certificates(material.chain_pem)[0].verify_directly_issued_by(signing_ca.cert)
            assert backend.ready
    finally:
        stop.set()
        issuer_thread.join(5)


async def test_a_refused_delete_is_not_retried(
    kube_plane, kube_api, make_namespace, make_service_account, mint_token, ca_cluster_issuer, approver, tmp_path
):
    """Without RBAC for ``delete`` the API answers 403, and will for the whole retry window: the delete gives up at
    once (counted, left to the sweep) instead of retrying for 60 s and holding up a clean shutdown."""
    namespace = make_namespace("istio-system")
    approver(namespace)
    account = make_service_account(namespace, "meshsigner")
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="no-delete"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["cert-manager.io"],
                    resources=["certificaterequests"],
                    verbs=["create", "get", "list", "watch"],
                )
            ],
        ),
    )
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="no-delete"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="no-delete"),
        ),
    )
    token = mint_token(namespace, account, audience=None)
    kubeconfig = kubeconfig_for_token(kube_plane, token, tmp_path / "kubeconfig")
    seam = KubeClient(KubeOptions(kubeconfig=str(kubeconfig)), KubeMetrics(CollectorRegistry()))
    try:
        async with running_backend(
            seam, namespace, ca_cluster_issuer, ca_cluster_issuer.roots_file(tmp_path)
        ) as backend:
            await backend.sign(signing_request())  # issued; its delete is refused (403)
            started = time.monotonic()
            await backend.close()
            drained = time.monotonic() - started
            failures = backend.registry.get_sample_value("meshsigner_certificate_request_delete_failures_total")
    finally:
        seam.close()
    assert drained < 3.0, f"the refused delete was retried ({drained:.1f}s)"
    assert failures == 1.0
    assert len(list_requests(kube_api, namespace)) == 1  # left for the sweep (which would be refused too)
