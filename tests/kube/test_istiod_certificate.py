"""istiod's certificate on the real plane: with cert-manager, the Certificate (revision names, secretName
istiod-tls) is created, put back when edited, recreated when deleted and follows the issuer; with the local CA a
``meshsigner serve`` process writes the istiod-tls Secret itself and rewrites it when deleted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.controllers import ControllerMetrics
from bridge.istiod_certificate import IstiodCertOptions, certificate_keeper
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from clocks import SystemClock
from tests.support.kube_edits import edit
from tests.support.processes import local_signer_flags, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

CM = ("cert-manager.io", "v1")


async def _until(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    started = time.monotonic()
    while not await asyncio.to_thread(condition):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def test_istiod_certificate_is_kept_and_follows_the_issuer(kube_plane, kube_api, make_namespace):
    namespace = make_namespace("istio")
    options = IstiodCertOptions(
        name="istiod-dynamic", namespace=namespace, revisions=("default", "canary", "canary"), key_size=2048
    )
    issuers = IssuerSelector(IssuerRef("istio-ca", "Issuer"))
    registry = CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))

    keeper = certificate_keeper(seam, options, issuers, metrics=ControllerMetrics(registry), clock=SystemClock())
    custom = client.CustomObjectsApi(kube_api)

    def read() -> dict | None:
        try:
            return custom.get_namespaced_custom_object(*CM, namespace, "certificates", options.name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    try:
        await _until(read, "Certificate created")
        spec = read()["spec"]
        assert spec["secretName"] == "istiod-tls"
        assert spec["dnsNames"] == [f"istiod.{namespace}.svc", f"istiod-canary.{namespace}.svc"]
        assert spec["uris"] == [f"spiffe://cluster.local/ns/{namespace}/sa/istiod-service-account"]
        assert (spec["duration"], spec["renewBefore"]) == ("1h0m0s", "30m0s")

        edit(
            read,
            lambda certificate: certificate["spec"].update(dnsNames=["attacker.example.org"]),
            lambda certificate: custom.replace_namespaced_custom_object(
                *CM, namespace, "certificates", options.name, certificate
            ),
        )  # cert-manager writes its status meanwhile
        await _until(lambda: read()["spec"] == spec, "edited spec put back")

        custom.delete_namespaced_custom_object(*CM, namespace, "certificates", options.name)
        await _until(read, "deleted Certificate recreated")

        # the runtime issuer changes (as the runtime ConfigMap would): the Certificate follows
        issuers.on_event(
            "ADDED",
            {"data": {"issuer-name": "runtime-ca", "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"}},
        )
        await _until(lambda: read()["spec"]["issuerRef"]["name"] == "runtime-ca", "issuerRef follows the issuer")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        seam.close()


def _secret(core: client.CoreV1Api, namespace: str) -> Any:
    try:
        return core.read_namespaced_secret("istiod-tls", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _istiod_duty_flags(kubeconfig: str, namespace: str, lease_namespace: str, lease_name: str) -> list[str]:
    """A leader on its own Lease keeping istiod's certificate (2h, ECDSA P-256, revisions default and canary) in
    ``namespace``, and no root ConfigMaps anywhere."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--leader-election-namespace={lease_namespace}",
        f"--leader-election-name={lease_name}",
        f"--configmap-namespace-selector=meshsigner-none-{secrets.token_hex(3)}=yes",
        "--istiod-cert-enabled",
        f"--istiod-cert-namespace={namespace}",
        "--istiod-cert-istio-revisions=default,canary",
        "--istiod-cert-key-algorithm=ECDSA",
        "--istiod-cert-key-size=256",
        "--istiod-cert-duration=2h",
    ]


def _kept_secret(
    core: client.CoreV1Api, namespace: str, roots_pem: bytes, timeout: float
) -> tuple[x509.Certificate, x509.Certificate]:
    """Waits for the istiod-tls Secret, checks what every signer writes (TLS type, the three keys, ca.crt = the
    roots, a key for the leaf, a 2h life), deletes it and waits for its rewrite with a new certificate. Returns the
    first and the rewritten leaf."""
    wait_for(lambda: _secret(core, namespace) is not None, "istiod-tls written", timeout)
    secret = _secret(core, namespace)
    assert secret.type == "kubernetes.io/tls"
    assert set(secret.data) == {"tls.crt", "tls.key", "ca.crt"}
    assert base64.b64decode(secret.data["ca.crt"]) == roots_pem
    leaf = x509.load_pem_x509_certificates(base64.b64decode(secret.data["tls.crt"]))[0]
    key = serialization.load_pem_private_key(base64.b64decode(secret.data["tls.key"]), None)
    assert key.public_key() == leaf.public_key()
    assert 7100 < (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() <= 7200 + 120

    core.delete_namespaced_secret("istiod-tls", namespace)
    wait_for(lambda: _secret(core, namespace) is not None, "istiod-tls rewritten after deletion", timeout)
    again = x509.load_pem_x509_certificate(base64.b64decode(_secret(core, namespace).data["tls.crt"]))
    assert again.serial_number != leaf.serial_number
    return leaf, again


def test_local_signer_writes_the_istiod_tls_secret(kube_plane, kube_api, make_namespace, tmp_path: Path):
    namespace = make_namespace("istio")
    core = client.CoreV1Api(kube_api)
    flags = [
        *local_signer_flags(tmp_path, TokenIssuer()),
        *_istiod_duty_flags(kube_plane.kubeconfig, namespace, make_namespace("lease"), "meshsigner-istiod"),
        "--istiod-cert-renew-before=1h",
    ]
    server = start_server(flags, tmp_path / "serve.log")
    try:
        leaf, _ = _kept_secret(core, namespace, (tmp_path / "ca" / "root-cert.pem").read_bytes(), 30)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [f"istiod.{namespace}.svc", f"istiod-canary.{namespace}.svc"]
    finally:
        server.stop()
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_secret("istiod-tls", namespace)


def test_kubernetes_csr_signer_writes_the_istiod_tls_secret(
    kube_plane, kube_api, make_namespace, ca_cluster_issuer, tmp_path: Path
):
    """Signed through the CSR API: cert-manager's CSR signer for a CA ClusterIssuer issues what the CSR asks, so
    the SANs come from meshsigner's CSR; the chain leads to the pinned --root-ca-file, which is ca.crt."""
    namespace = make_namespace("istio")
    core = client.CoreV1Api(kube_api)
    roots_file = ca_cluster_issuer.roots_file(tmp_path)
    flags = [
        "--signer=kubernetes-csr",
        f"--signer-name={ca_cluster_issuer.signer_name}",
        f"--root-ca-file={roots_file}",
        "--authenticator=tokenreview",
        "--serving-signature-algorithm=ECDSA",
        "--serving-certificate-key-size=256",
        *_istiod_duty_flags(kube_plane.kubeconfig, namespace, make_namespace("lease"), "meshsigner-istiod-csr"),
        "--istiod-cert-additional-dns-names=istiod.example.org",
    ]
    server = start_server(flags, tmp_path / "serve.log")
    try:
        leaf, again = _kept_secret(core, namespace, roots_file.read_bytes(), 60)
        root = x509.load_pem_x509_certificate(roots_file.read_bytes())
        leaf.verify_directly_issued_by(root)  # the CA issuer signs leaves directly
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [
            f"istiod.{namespace}.svc",
            f"istiod-canary.{namespace}.svc",
            "istiod.example.org",
        ]
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://cluster.local/ns/{namespace}/sa/istiod-service-account"
        ]
        again.verify_directly_issued_by(root)
    finally:
        server.stop()
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_secret("istiod-tls", namespace)


def test_kubernetes_csr_signer_refuses_an_istiod_duration_under_the_csr_api_minimum(
    kube_plane, ca_cluster_issuer, tmp_path: Path
):
    flags = [
        "--signer=kubernetes-csr",
        f"--signer-name={ca_cluster_issuer.signer_name}",
        f"--root-ca-file={ca_cluster_issuer.roots_file(tmp_path)}",
        "--authenticator=tokenreview",
        f"--kubeconfig={kube_plane.kubeconfig}",
        "--leader-election-name=meshsigner-istiod-short",
        "--istiod-cert-enabled",
        "--istiod-cert-duration=5m",
        "--istiod-cert-renew-before=1m",
    ]
    server = start_server(flags, tmp_path / "serve.log", wait=False)
    try:
        assert server.process.wait(timeout=60) == 2
        assert "under the Kubernetes CSR API's minimum of 600s" in (tmp_path / "serve.log").read_text()
    finally:
        server.stop()
