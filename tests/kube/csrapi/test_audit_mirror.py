"""The audit mirror on the real plane: after an allowed and a refused request, ``kubectl get csr`` shows one
CertificateSigningRequest each, with meshsigner's audit signer name, the caller, the requested identity, the
decision id, rule and reason, Approved or Denied with that reason, and the issued certificate for the allowed one;
mirrors past their retention are deleted."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

import grpc
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from bridge.audit_mirror import AuditMirror, MirrorOptions
from policies import Caller, Decision, IssuanceRequest, Outcome, Verdict
from signer.audit_trail import MirroringRecorder
from signer.decided_request import DecidedRequest
from tests.e2e.calls import create
from tests.kube.csrapi.conftest import plane_client
from tests.support.csr_builder import make_csr

AUDIT = "app.kubernetes.io/managed-by=meshsigner,meshsigner.io/purpose=audit"


def _conditions(csr) -> dict[str, object]:
    return {c.type: c for c in (csr.status.conditions or [])} if csr.status else {}


def _mirrors(our_csrs, signer_name: str, decision: str) -> list:
    return our_csrs(signer_name, f"{AUDIT},meshsigner.io/decision={decision}")


def _wait_mirror(our_csrs, signer_name: str, decision: str, *, certificate: bool, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for csr in _mirrors(our_csrs, signer_name, decision):
            decided = "Approved" in _conditions(csr) or "Denied" in _conditions(csr)
            if decided and (csr.status.certificate or not certificate):
                return csr
        time.sleep(0.2)
    pytest.fail(f"no {decision} mirror of {signer_name} within {timeout}s")


def _bytes(value) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else value


def test_allowed_requests_are_mirrored_with_their_certificates(
    ca_cluster_issuer, signer_factory, make_namespace, make_service_account, mint_token, our_csrs
):
    audit_name = f"meshsigner.io/audit-{secrets.token_hex(3)}"
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, "--mirror-certificate-signing-requests", f"--mirror-signer-name={audit_name}"
    )
    ns = make_namespace("mirror")
    issued: dict[str, x509.Certificate] = {}  # SPIFFE ID → leaf
    for name in ("web", "api"):
        sa = make_service_account(ns, name)
        uri = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
        code, chain, details = create(signer.stub(), make_csr([uri]), mint_token(ns, sa), validity=3600)
        assert code is grpc.StatusCode.OK, details
        issued[uri] = x509.load_pem_x509_certificate(chain[0].encode())

    deadline = time.monotonic() + 30
    while len(mirrors := [m for m in _mirrors(our_csrs, audit_name, "allowed") if m.status.certificate]) < 2:
        assert time.monotonic() < deadline, "the two allowed requests were not both mirrored"
        time.sleep(0.2)
    assert len(mirrors) == 2
    for mirror in mirrors:
        annotations = mirror.metadata.annotations
        uri = annotations["meshsigner.io/requested-identities"]
        sa = uri.rsplit("/", 1)[1]
        assert annotations["meshsigner.io/caller"] == f"cluster.local/ns/{ns}/sa/{sa}"
        assert annotations["meshsigner.io/reason"] == "GRANTED"
        assert annotations["meshsigner.io/decision-id"]
        assert annotations["meshsigner.io/mirrors"].startswith("meshsigner-")  # the CertificateRequest's name
        assert mirror.spec.signer_name == audit_name
        approved = _conditions(mirror)["Approved"]
        assert approved.reason == "MeshsignerPolicyAllowed"
        assert annotations["meshsigner.io/decision-id"] in approved.message and "GRANTED" in approved.message
        leaf = x509.load_pem_x509_certificates(_bytes(mirror.status.certificate))[0]
        assert leaf == issued[uri]  # this request's certificate, not another's
        workload_csr = x509.load_pem_x509_csr(_bytes(mirror.spec.request))
        assert workload_csr.public_key() == leaf.public_key()  # and this request's CSR
    assert signer.server.metric('meshsigner_mirror_written_total{decision="allowed"}') == 2
    assert signer.server.metric('meshsigner_mirror_dropped_total{reason="queue_full"}') == 0


def test_refused_request_is_mirrored_as_denied(
    ca_cluster_issuer, signer_factory, make_namespace, make_service_account, mint_token, our_csrs
):
    audit_name = f"meshsigner.io/audit-{secrets.token_hex(3)}"
    signer = signer_factory(
        make_namespace("istio-system"),
        ca_cluster_issuer,
        "--mirror-certificate-signing-requests",
        f"--mirror-signer-name={audit_name}",
    )
    ns = make_namespace("mirror")
    sa = make_service_account(ns, "web")
    other = f"spiffe://cluster.local/ns/{ns}/sa/someone-else"
    code, _, details = create(signer.stub(), make_csr([other]), mint_token(ns, sa), validity=3600)
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    mirror = _wait_mirror(our_csrs, audit_name, "denied", certificate=False, timeout=10)
    denied = _conditions(mirror)["Denied"]
    assert denied.reason == "MeshsignerPolicyDenied" and "IDENTITY_NOT_ALLOWED" in denied.message
    assert mirror.metadata.annotations["meshsigner.io/requested-identities"] == other
    assert not mirror.status.certificate


def _denial(uri: str) -> Decision:
    return Decision(Verdict.DENY, Outcome.PERMISSION_DENIED, "IDENTITY_NOT_ALLOWED", f"{uri} is not yours",
                    deny_rules=("tenants/no-foreign",))  # fmt: skip


async def test_refused_decision_becomes_a_denied_mirror_and_expires(kube_plane, our_csrs):
    """The front door's side in-process: it records the refusal with the CSR as received; the mirror writes a
    Denied CSR of that CSR with the decision's reason and rule; the retention sweep deletes it later."""
    audit_name = f"meshsigner.io/audit-{secrets.token_hex(3)}"
    kube = plane_client(kube_plane, qps=50)
    registry = CollectorRegistry()
    mirror = AuditMirror(kube, MirrorOptions(signer_name=audit_name, retention_seconds=1.0), registry=registry)
    stop = asyncio.Event()
    writers = asyncio.create_task(mirror.run(stop))
    try:
        uri = "spiffe://cluster.local/ns/team-a/sa/someone-else"
        csr_pem = make_csr([uri])
        record = MirroringRecorder(None, mirror)
        caller = Caller("cluster.local", "team-a", "web")
        record(DecidedRequest("decision-0001", caller, IssuanceRequest(uris=(uri,)), _denial(uri), csr_pem))
        async with asyncio.timeout(20):
            await mirror.drained()
        [mirror_csr] = await asyncio.to_thread(_mirrors, our_csrs, audit_name, "denied")
        denied = _conditions(mirror_csr)["Denied"]
        assert denied.reason == "MeshsignerPolicyDenied"
        assert "decision-0001" in denied.message and "IDENTITY_NOT_ALLOWED" in denied.message
        assert "tenants/no-foreign" in denied.message
        annotations = mirror_csr.metadata.annotations
        assert annotations["meshsigner.io/rule"] == "tenants/no-foreign"
        assert annotations["meshsigner.io/caller"] == "cluster.local/ns/team-a/sa/web"
        assert not mirror_csr.status.certificate
        assert _bytes(mirror_csr.spec.request).decode("ascii") == csr_pem  # the CSR the recorder was handed
        assert "meshsigner.io/mirrors" not in annotations  # refused: no API object was made for it
        async with asyncio.timeout(30):
            while await mirror.sweeper.sweep() == 0:  # nothing is old enough yet
                await asyncio.sleep(0.25)
        assert await asyncio.to_thread(our_csrs, audit_name, AUDIT) == []
    finally:
        stop.set()
        await writers
        kube.close()
