"""Switching issuers at runtime through istio-csr's ConfigMap, and rotating the pinned roots with a two-root bundle:
the chain is refused while its root is not pinned, accepted once the bundle holds both, and the answer carries
the whole bundle."""

from __future__ import annotations

import time

import grpc
from cryptography import x509
from kubernetes import client

from tests.e2e.calls import create
from tests.support.csr_builder import make_csr


def _issuer_of(chain: list[str]) -> x509.Name:
    return x509.load_pem_x509_certificate(chain[0].encode()).issuer


def _until(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_runtime_config_map_switch_and_root_rotation(
    kube_api, make_namespace, make_service_account, mint_token, make_ca_issuer, signer_factory, tmp_path
):
    cr_ns = make_namespace("istio-system")
    first, second = make_ca_issuer(cr_ns, "first"), make_ca_issuer(cr_ns, "second")
    roots = tmp_path / "pinned-roots.pem"
    roots.write_bytes(first.ca_cert_pem)
    signer = signer_factory(
        cr_ns,
        first,
        "--runtime-issuance-config-map-name=issuer-config",
        f"--runtime-issuance-config-map-namespace={cr_ns}",
        root_file=roots,
    )
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    csr, token = make_csr([f"spiffe://cluster.local/ns/{ns}/sa/{sa}"]), mint_token(ns, sa)
    stub = signer.stub()

    code, chain, details = create(stub, csr, token)
    assert code == grpc.StatusCode.OK, details
    assert _issuer_of(chain) == first.ca.cert.subject

    core = client.CoreV1Api(kube_api)
    config_map = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="issuer-config"),
        data={"issuer-name": second.name, "issuer-kind": "Issuer", "issuer-group": "cert-manager.io"},
    )
    core.create_namespaced_config_map(cr_ns, config_map)
    # the second CA is not pinned yet: its chains are refused, never returned
    code, chain, details = _until(
        lambda: (r := create(stub, csr, token))[0] != grpc.StatusCode.OK and r, "the switch to the second issuer"
    )
    assert (code, chain) == (grpc.StatusCode.FAILED_PRECONDITION, [])
    assert "CHAIN_NOT_TRUSTED" in details

    roots.write_bytes(first.ca_cert_pem + second.ca_cert_pem)  # rotation: both roots pinned
    code, chain, details = _until(lambda: (r := create(stub, csr, token))[0] == grpc.StatusCode.OK and r, "reload")
    assert _issuer_of(chain) == second.ca.cert.subject
    bundle = x509.load_pem_x509_certificates(chain[-1].encode())
    assert [c.subject for c in bundle] == [first.ca.cert.subject, second.ca.cert.subject]

    roots.write_bytes(b"garbage")  # a broken bundle is refused; the last good one stays
    _until(lambda: signer.server.metric("meshsigner_root_bundle_rejections_total") >= 1, "the garbage bundle refused")
    code, chain, details = create(stub, csr, token)
    assert code == grpc.StatusCode.OK, details
    assert len(x509.load_pem_x509_certificates(chain[-1].encode())) == 2

    config_map.data = {"issuer-name": second.name}  # incomplete: logged, the current issuer kept
    core.replace_namespaced_config_map("issuer-config", cr_ns, config_map)
    _until(lambda: "runtime issuer ConfigMap needs non-empty" in signer.server.log(), "the incomplete ConfigMap seen")
    code, chain, _ = create(stub, csr, token)
    assert code == grpc.StatusCode.OK and _issuer_of(chain) == second.ca.cert.subject

    core.delete_namespaced_config_map("issuer-config", cr_ns)  # back to the static issuer
    code, chain, _ = _until(
        lambda: (
            (r := create(stub, csr, token))[0] == grpc.StatusCode.OK and _issuer_of(r[1]) == first.ca.cert.subject and r
        ),
        "the fall back to the static issuer",
    )
    log = signer.server.log()
    assert "root bundle not loaded, keeping the 2 current roots" in log
    assert "runtime issuer ConfigMap needs non-empty" in log


def test_runtime_only_issuer_is_not_ready_without_config_map(kube_api, make_namespace, make_ca_issuer, signer_factory):
    from tests.support.processes import readyz

    cr_ns = make_namespace("istio-system")
    issuer = make_ca_issuer(cr_ns)
    signer = signer_factory(
        cr_ns,
        issuer,
        "--issuer-enabled=false",
        "--runtime-issuance-config-map-name=issuer-config",
        f"--runtime-issuance-config-map-namespace={cr_ns}",
        wait=False,
    )

    def ready_state():
        try:
            return readyz(signer.server.readiness_port)
        except OSError:
            return 0, ""

    _, body = _until(lambda: (r := ready_state())[0] == 503 and r, "a not-ready answer")
    assert "issuer_configured not ready" in body
    client.CoreV1Api(kube_api).create_namespaced_config_map(
        cr_ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="issuer-config"),
            data={"issuer-name": issuer.name, "issuer-kind": "Issuer", "issuer-group": "cert-manager.io"},
        ),
    )
    _until(lambda: ready_state()[0] == 200, "readiness once the ConfigMap names an issuer", timeout=20)
