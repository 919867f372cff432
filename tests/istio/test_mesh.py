"""A real istiod (CA server off) and a real pilot-agent (proxyless gRPC mode) working through meshsigner.

The agent runs as Istio's ``grpc-agent`` injection template runs it: no Envoy (DISABLE_ENVOY=true), certificates
written to OUTPUT_CERTS, and an XDS socket for the gRPC application, played here by ``xdsprobe``. Its workload
certificate comes from meshsigner (CA_ADDR); its XDS stream goes to istiod over TLS, checked against the root that
meshsigner issued istiod's serving certificate from.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import re
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from tests.istio.conftest import ISTIOD_CERTIFICATE, ISTIOD_TLS_SECRET, ROOT_CONFIGMAP, mounted_root
from tests.istio.install_values import helm_values, istio_operator_values
from tests.istio.mesh import (
    ISTIO_NAMESPACE,
    ISTIOD_HOST,
    ISTIOD_SPIFFE_ID,
    Agent,
    probe_responses,
    start_probe,
    wait_until,
)

CERT_WAIT = 120  # the machine is small and shared; a cold agent start includes key generation and TokenReview


def _uris(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _wait_for_certificate(agent: Agent) -> list[x509.Certificate]:
    wait_until(
        agent.has_certificate, CERT_WAIT, "the agent's certificate files", alive=agent.process, log=agent.log_path
    )
    return agent.chain()


def _make_grpc_service(kube_api, namespace: str, name: str, port: int) -> str:
    client.CoreV1Api(kube_api).create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1ServiceSpec(
                selector={"app": name},
                ports=[client.V1ServicePort(name="grpc", port=port, app_protocol="grpc")],
            ),
        ),
    )
    return f"{name}.{namespace}.svc.cluster.local:{port}"


def _is_agent(proxy_id: str, agent: Agent) -> bool:
    """istiod names a proxy ``<pod>.<namespace>`` (the ID's third field), a connection ``<pod>.<namespace>-<n>``."""
    return proxy_id == f"{agent.workload.pod_name}.{agent.workload.namespace}"


def _connections(istiod, agent: Agent) -> list[str]:
    ids = [c["connectionId"] for c in istiod.connected_proxies()]
    return [i for i in ids if _is_agent(i.rsplit("-", 1)[0], agent)]


def test_install_doc_blocks_agree():
    helm, operator = helm_values(), istio_operator_values()
    assert helm == operator
    assert helm.istiod_env["ENABLE_CA_SERVER"] == "false"


def test_agent_gets_its_workload_certificate_from_meshsigner(
    start_workload_agent, make_mesh_namespace, mesh_signer, kube_api
):
    namespace = make_mesh_namespace()
    agent = start_workload_agent(namespace, "web")
    chain = _wait_for_certificate(agent)

    # the root the agent was given is the one meshsigner's trust distribution wrote into the namespace
    configmap = client.CoreV1Api(kube_api).read_namespaced_config_map(ROOT_CONFIGMAP, namespace)
    assert (configmap.metadata.labels or {}).get("istio.io/config") == "true"
    assert mounted_root(kube_api, namespace) == configmap.data["root-cert.pem"].encode()
    root = x509.load_pem_x509_certificate(mounted_root(kube_api, namespace))
    assert root == x509.load_pem_x509_certificate(mesh_signer.root_pem)
    leaf = chain[0]
    assert _uris(leaf) == [agent.workload.spiffe_id] == ["spiffe://cluster.local/ns/" + namespace + "/sa/web"]
    for child, parent in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)
    assert chain[-1] == root
    assert x509.load_pem_x509_certificate((agent.cert_dir / "root-cert.pem").read_bytes()) == root
    key = serialization.load_pem_private_key((agent.cert_dir / "key.pem").read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()

    records = mesh_signer.decisions_for(namespace, "web")
    assert [r["decision"] for r in records] == ["Allow"]
    assert records[0]["issued"]["uris"] == [agent.workload.spiffe_id]
    assert records[0]["caller"]["podName"] == agent.workload.pod_name  # the pod-bound token reached meshsigner
    assert dt.datetime.fromisoformat(records[0]["issued"]["notAfter"]) == leaf.not_valid_after_utc


def test_agent_xds_stream_to_istiod_delivers_configuration(
    start_workload_agent, make_mesh_namespace, istiod, istio_binaries, kube_api
):
    namespace = make_mesh_namespace()
    listener = _make_grpc_service(kube_api, namespace, "echo", 7070)
    agent = start_workload_agent(namespace, "echo")
    _wait_for_certificate(agent)

    probe, out = start_probe(istio_binaries.xds_probe, agent, [listener])
    responses = wait_until(
        lambda: [r for r in probe_responses(out) if listener in (r["resources"] or [])],
        90,
        f"istiod's listener {listener} through the agent",
        alive=probe,
        log=agent.log_path,
    )
    assert responses[0]["typeUrl"] == "type.googleapis.com/envoy.config.listener.v3.Listener"

    # istiod lists the agent's connection and records the listener version the probe acknowledged.
    assert len(_connections(istiod, agent)) == 1, istiod.connected_proxies()
    sync = wait_until(
        lambda: [s for s in istiod.debug("syncz") if s.get("listener_acked") and _is_agent(s["proxy"], agent)],
        30,
        "istiod's record of the acknowledged listener",
    )
    assert sync[0]["listener_acked"] == sync[0]["listener_sent"] in {r["nonce"] for r in probe_responses(out)}


def test_xds_over_mtls_with_the_certificate_from_meshsigner(
    start_workload_agent, make_mesh_namespace, istiod, istio_binaries, kube_api
):
    """Istio's VM layout (PROV_CERT = OUTPUT_CERTS): the agent presents its meshsigner certificate to istiod. With
    the token file gone, istiod can only authenticate the XDS stream by that certificate."""
    namespace = make_mesh_namespace()
    listener = _make_grpc_service(kube_api, namespace, "vm", 7070)
    agent = start_workload_agent(namespace, "vm", provisioned_cert_dir=True)
    _wait_for_certificate(agent)
    agent.token_file.unlink()

    probe, out = start_probe(istio_binaries.xds_probe, agent, [listener])
    wait_until(
        lambda: [r for r in probe_responses(out) if listener in (r["resources"] or [])],
        90,
        f"istiod's listener {listener} over the certificate-authenticated stream",
        alive=probe,
        log=agent.log_path,
    )
    assert len(_connections(istiod, agent)) == 1


def test_xds_without_token_or_certificate_is_refused(
    start_workload_agent, make_mesh_namespace, istiod, istio_binaries, kube_api
):
    """The control for the test above: the Kubernetes layout presents no client certificate to istiod, so without
    its token the same XDS request is refused."""
    namespace = make_mesh_namespace()
    listener = _make_grpc_service(kube_api, namespace, "tokenless", 7070)
    agent = start_workload_agent(namespace, "tokenless")
    _wait_for_certificate(agent)
    agent.token_file.unlink()

    probe, out = start_probe(istio_binaries.xds_probe, agent, [listener])
    assert probe.wait(90) != 0
    assert not probe_responses(out)
    # the agent's XDS proxy either relays istiod's status or drops the stream (EOF): the refusal is in its log
    refusal = (agent.root / "xdsprobe-0.err").read_text() + agent.log_path.read_text()
    assert "Unauthenticated" in refusal or "authentication" in refusal.lower()
    assert not _connections(istiod, agent)


def test_agent_rotates_its_certificate_through_meshsigner(
    start_workload_agent, make_mesh_namespace, mesh_signer, istiod, istio_binaries, kube_api
):
    namespace = make_mesh_namespace()
    listener = _make_grpc_service(kube_api, namespace, "rotating", 7070)
    # The CSR API refuses lifetimes under 600 s: there the agent asks for 600 s and rotates at 5% of it left
    # (SECRET_GRACE_PERIOD_RATIO), about 30 s after issuance; elsewhere 40 s, rotated at half of it.
    ttl, grace = (600, "0.95") if mesh_signer.mode == "kubernetes-csr" else (40, "0.5")
    agent = start_workload_agent(
        namespace, "rotating", extra_env={"SECRET_TTL": f"{ttl}s", "SECRET_GRACE_PERIOD_RATIO": grace}
    )
    first = _wait_for_certificate(agent)[0]
    assert mesh_signer.decisions_for(namespace, "rotating")[0]["issued"]["durationSeconds"] == ttl

    probe, out = start_probe(istio_binaries.xds_probe, agent, [listener])
    wait_until(lambda: probe_responses(out), 90, "the first XDS response", alive=probe, log=agent.log_path)
    before = _connections(istiod, agent)

    def rotated() -> x509.Certificate | None:
        leaf = agent.chain()[0] if agent.has_certificate() else first
        return leaf if leaf.serial_number != first.serial_number else None

    second = wait_until(rotated, 60, "a rotated certificate", alive=agent.process, log=agent.log_path)
    seen_at = dt.datetime.now(dt.UTC)
    assert seen_at < first.not_valid_after_utc, "the agent rotated only after its certificate expired"
    assert _uris(second) == [agent.workload.spiffe_id]

    records = mesh_signer.decisions_for(namespace, "rotating", at_least=2)
    assert len(records) >= 2 and all(r["decision"] == "Allow" for r in records)
    assert {r["request"]["validitySeconds"] for r in records} == {ttl}
    # The XDS stream lived through the rotation: same connection, probe still streaming, no reconnect in the log.
    assert probe.poll() is None
    after = _connections(istiod, agent)
    assert after == before and len(after) == 1
    assert not re.search(r"(?i)upstream (terminated|error)|connection error|reconnect", agent.log())


def test_policy_refusal_reaches_the_agent_log(start_workload_agent, make_mesh_namespace, mesh_signer):
    namespace = make_mesh_namespace()
    agent = start_workload_agent(namespace, "quarantined-batch")
    message = "quarantined-* service accounts may not join the mesh"
    wait_until(
        lambda: message in agent.log(), CERT_WAIT, "meshsigner's refusal in the agent's log", alive=agent.process
    )
    refusal = next(line for line in agent.log().splitlines() if message in line)
    assert "PermissionDenied" in refusal
    assert not agent.has_certificate()
    records = mesh_signer.decisions_for(namespace, "quarantined-batch")
    assert records and all(r["decision"] == "Deny" for r in records)
    assert records[0]["denyRules"]


def test_istiod_serves_xds_with_the_istiod_tls_certificate(istiod, istiod_tls_secret, mesh_signer):
    context = ssl.create_default_context(cadata=mesh_signer.root_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", istiod.xds_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=ISTIOD_HOST) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    tls_crt = base64.b64decode(istiod_tls_secret.data["tls.crt"])
    assert served == x509.load_pem_x509_certificate(tls_crt).public_bytes(serialization.Encoding.DER)


def test_istiod_mounts_what_meshsigner_wrote(istiod, istiod_tls_secret, mesh_signer, kube_api):
    """istiod's certificate and root are the objects meshsigner's controllers produced, nothing the tests wrote
    (with --signer kubernetes-csr the certificate is the install's own cert-manager Certificate's)."""
    data = {key: base64.b64decode(value) for key, value in istiod_tls_secret.data.items()}
    mounted = istiod.root / "var/run/secrets/istiod"
    assert (mounted / "tls/tls.crt").read_bytes() == data["tls.crt"]
    assert (mounted / "tls/tls.key").read_bytes() == data["tls.key"]
    assert (mounted / "ca/root-cert.pem").read_bytes() == mounted_root(kube_api, ISTIO_NAMESPACE)

    root = x509.load_pem_x509_certificate(mesh_signer.root_pem)
    assert x509.load_pem_x509_certificates(data["ca.crt"]) == [root]
    assert x509.load_pem_x509_certificates(mounted_root(kube_api, ISTIO_NAMESPACE)) == [root]
    configmap = client.CoreV1Api(kube_api).read_namespaced_config_map(ROOT_CONFIGMAP, ISTIO_NAMESPACE)
    assert (configmap.metadata.labels or {}).get("istio.io/config") == "true"  # trust distribution's label

    leaf = x509.load_pem_x509_certificates(data["tls.crt"])[0]
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [ISTIOD_HOST]  # the default revision's name
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ISTIOD_SPIFFE_ID]

    annotations = istiod_tls_secret.metadata.annotations or {}
    if mesh_signer.mode == "kubernetes-csr":
        # meshsigner keeps no istiod certificate in this mode: cert-manager wrote the Secret for the install's own
        # Certificate (docs/istio-install.md); the root istiod trusts is still meshsigner's ConfigMap
        assert annotations.get("cert-manager.io/certificate-name") == ISTIOD_CERTIFICATE
        assert annotations.get("cert-manager.io/issuer-name") == mesh_signer.issuer_name
    elif mesh_signer.mode == "cert-manager":
        # cert-manager wrote the Secret for the Certificate meshsigner keeps, issued by meshsigner's issuer
        assert annotations.get("cert-manager.io/certificate-name") == ISTIOD_CERTIFICATE
        certificate = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            "cert-manager.io", "v1", ISTIO_NAMESPACE, "certificates", ISTIOD_CERTIFICATE
        )
        assert certificate["spec"]["secretName"] == ISTIOD_TLS_SECRET
        assert certificate["spec"]["issuerRef"]["name"] == mesh_signer.issuer_name
    else:
        # meshsigner wrote the Secret itself, signed by the local CA whose key only its process holds
        assert not any(key.startswith("cert-manager.io/") for key in annotations)
        assert istiod_tls_secret.type == "kubernetes.io/tls"
