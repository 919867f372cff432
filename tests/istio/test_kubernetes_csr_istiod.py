"""``--signer kubernetes-csr --istiod-cert-enabled``: meshsigner writes the istiod-tls Secret itself, its certificate
asked for through a CertificateSigningRequest to cert-manager's CSR signer for a CA ClusterIssuer (approved by
meshsigner), its ``ca.crt`` the pinned ``--root-ca-file`` (docs/istio-install.md, docs/kubernetes-csr-mode.md).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.istio.mesh import wait_until
from tests.support.processes import readyz, start_server


def _ready_or_exited(server) -> bool:
    if server.process.poll() is not None:
        return True
    try:
        return readyz(server.readiness_port)[0] == 200
    except OSError:
        return False


def _istiod_secret(kube_api, namespace: str) -> Any:
    try:
        return client.CoreV1Api(kube_api).read_namespaced_secret("istiod-tls", namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
    return None


def test_kubernetes_csr_signer_keeps_istiod_certificate(
    kube_plane, kube_api, ca_cluster_issuer, make_namespace, tmp_path
):
    namespace = make_namespace("istiod-csr")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca_cluster_issuer.ca_cert_pem)
    server = start_server(
        [
            "--signer=kubernetes-csr",
            f"--signer-name={ca_cluster_issuer.signer_name}",
            "--approve-certificate-signing-requests",
            f"--root-ca-file={roots}",
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--leader-election-namespace={namespace}",
            f"--leader-election-name=meshsigner-{secrets.token_hex(3)}",
            f"--configmap-namespace-selector=meshsigner-none-{secrets.token_hex(3)}=yes",  # no root ConfigMaps
            "--istiod-cert-enabled=true",
            f"--istiod-cert-namespace={namespace}",
        ],
        tmp_path / "serve.log",
        wait=False,
    )
    try:
        wait_until(lambda: _ready_or_exited(server), 120, "meshsigner ready or exited", log=server.log_path)
        assert server.process.poll() is None, f"meshsigner exited ({server.process.returncode}):\n{server.log()}"
        secret = wait_until(
            lambda: _istiod_secret(kube_api, namespace), 90, "istiod-tls", alive=server.process, log=server.log_path
        )
        root = x509.load_pem_x509_certificate(ca_cluster_issuer.ca_cert_pem)
        assert x509.load_pem_x509_certificates(base64.b64decode(secret.data["ca.crt"])) == [root]
        leaf = x509.load_pem_x509_certificates(base64.b64decode(secret.data["tls.crt"]))[0]
        leaf.verify_directly_issued_by(root)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [f"istiod.{namespace}.svc"]
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://cluster.local/ns/{namespace}/sa/istiod-service-account"
        ]
        assert not any(key.startswith("cert-manager.io/") for key in (secret.metadata.annotations or {}))
    finally:
        server.stop()
