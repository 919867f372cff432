"""Pure logic of the Kubernetes CSR backend and the audit mirror: terminal states of a CSR, the permission
messages, the refusal of grants under the API minimum, the mirror's objects, and its bounded, non-blocking queue."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from bridge.audit_mirror import AuditMirror, MirrorEntry, MirrorOptions, decision_condition, mirror_object
from bridge.errors import BackendUnavailable, IssuerDenied, IssuerFailed
from bridge.kube import KubeMetrics
from bridge.kubernetes_csr import (
    KubernetesCsrBackend,
    KubernetesCsrOptions,
    csr_terminal_state,
    csr_watch,
    needed_permissions,
)
from bridge.metrics import BridgeMetrics
from bridge.root_bundle import RootBundle
from bridge.signing import SigningRequest
from signer.settings import SettingsError, parse_serve_args
from tests.support.csr_builder import make_csr
from tests.support.watch_source import NoApi


def _csr(certificate: str = "", conditions: list[dict] | None = None) -> dict:
    return {"metadata": {"name": "meshsigner-x", "uid": "u1"}, "status": {"certificate": certificate,
                                                                           "conditions": conditions or []}}  # fmt: skip


def _condition(kind: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": "R", "message": message}


def test_csr_terminal_states():
    assert csr_terminal_state(_csr()) is None
    assert csr_terminal_state(_csr(conditions=[_condition("Approved")])) is None
    issued = csr_terminal_state(_csr(certificate=base64.b64encode(b"PEM").decode()))
    assert issued is not None and not isinstance(issued, Exception) and issued.certificate_pem == b"PEM"
    denied = csr_terminal_state(_csr(conditions=[_condition("Approved"), _condition("Denied", "not today")]))
    assert isinstance(denied, IssuerDenied) and denied.detail == "not today"  # → PERMISSION_DENIED
    failed = csr_terminal_state(_csr(conditions=[_condition("Approved"), _condition("Failed", "signer down")]))
    assert isinstance(failed, BackendUnavailable) and failed.reason == "CERTIFICATE_SIGNING_REQUEST_FAILED"


def test_missing_approve_permission_names_the_rbac_rule():
    needed = needed_permissions("clusterissuers.cert-manager.io/istio-ca", approve=True, delete=True)
    approve = [p for p in needed if p.verb == "approve"]
    assert len(approve) == 1
    assert approve[0].describe() == "approve signers/clusterissuers.cert-manager.io/istio-ca (certificates.k8s.io)"
    assert approve[0].rule() == (
        '{apiGroups: ["certificates.k8s.io"], resources: ["signers"], '
        'resourceNames: ["clusterissuers.cert-manager.io/istio-ca"], verbs: ["approve"]}'
    )
    without = needed_permissions("x.io/y", approve=False, delete=False)
    assert {(p.verb, p.resource) for p in without} == {
        ("create", "certificatesigningrequests"),
        ("list", "certificatesigningrequests"),
        ("watch", "certificatesigningrequests"),
    }


async def test_a_grant_under_600_seconds_is_refused_before_any_object_is_made():
    class NoWrites:
        clock = None

    source = NoApi()
    backend = KubernetesCsrBackend(
        NoWrites(),  # any API call would fail: none may happen
        KubernetesCsrOptions(signer_name="example.com/ca"),
        watch=csr_watch(source, "example.com/ca"),
        roots=RootBundle(None),
        metrics=BridgeMetrics(CollectorRegistry()),
        clock=source.clock,
    )
    pem = make_csr(["spiffe://cluster.local/ns/a/sa/b"])
    csr = x509.load_pem_x509_csr(pem.encode())
    request = SigningRequest(pem, csr, csr.public_key(), ("spiffe://cluster.local/ns/a/sa/b",), (),
                             datetime.now(UTC) + timedelta(seconds=300), 300)  # fmt: skip
    with pytest.raises(IssuerFailed) as refused:
        await backend.sign(request)
    assert refused.value.reason == "LIFETIME_BELOW_CSR_API_MINIMUM"


def _entry(allowed: bool, **extra) -> MirrorEntry:
    return MirrorEntry(
        decision_id="d-1",
        csr_pem=make_csr(["spiffe://cluster.local/ns/a/sa/b"]),
        caller="cluster.local/ns/a/sa/b",
        requested_identities=("spiffe://cluster.local/ns/a/sa/b",),
        allowed=allowed,
        reason="GRANTED" if allowed else "NO_MATCHING_RULE",
        rule="team/web" if allowed else "",
        **extra,
    )


def test_mirror_object_and_condition_carry_the_decision():
    obj = mirror_object(_entry(True, mirrors="meshsigner-abc"), "meshsigner.io/audit")
    assert obj["spec"]["signerName"] == "meshsigner.io/audit"
    assert "expirationSeconds" not in obj["spec"]
    assert obj["metadata"]["labels"]["meshsigner.io/decision"] == "allowed"
    assert obj["metadata"]["annotations"]["meshsigner.io/mirrors"] == "meshsigner-abc"
    assert base64.b64decode(obj["spec"]["request"]).startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    now = datetime.now(UTC)
    approved = decision_condition(_entry(True), now)
    assert (approved["type"], approved["reason"]) == ("Approved", "MeshsignerPolicyAllowed")
    assert approved["message"] == "decision d-1: GRANTED by team/web"
    denied = decision_condition(_entry(False, message="no rule matched"), now)
    assert (denied["type"], denied["reason"]) == ("Denied", "MeshsignerPolicyDenied")
    assert denied["message"] == "decision d-1: NO_MATCHING_RULE: no rule matched"


async def test_mirror_queue_is_bounded_and_never_blocks():
    class Unused:
        clock = NoApi().clock
        metrics = KubeMetrics(CollectorRegistry())

    registry = CollectorRegistry()
    mirror = AuditMirror(Unused(), MirrorOptions(queue_entries=10), registry=registry)
    entry = _entry(True)
    started = time.perf_counter()
    for _ in range(1000):  # no writer runs: the queue fills after 10
        mirror.submit(entry)
    per_submit = (time.perf_counter() - started) / 1000
    assert registry.get_sample_value("meshsigner_mirror_dropped_total", {"reason": "queue_full"}) == 990
    assert registry.get_sample_value("meshsigner_mirror_queued") == 10
    assert per_submit < 0.001  # enqueue only: far below a millisecond, however slow the API
    mirror.submit(MirrorEntry("d-2", "", "c", (), False, "R"))
    assert registry.get_sample_value("meshsigner_mirror_dropped_total", {"reason": "no_csr"}) == 1
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--signer=kubernetes-csr", "--root-ca-file=/r.pem"], "--signer-name"),
        (["--signer=kubernetes-csr", "--signer-name=no-slash", "--root-ca-file=/r.pem"], "--signer-name"),
        (["--signer=kubernetes-csr", "--signer-name=example.com/ca"], "--root-ca-file"),
        (
            [
                "--signer=kubernetes-csr",
                "--signer-name=example.com/ca",
                "--root-ca-file=/r.pem",
                "--mirror-certificate-signing-requests",
            ],
            "--mirror-certificate-signing-requests",
        ),
        (["--mirror-certificate-signing-requests", "--mirror-signer-name=audit"], "--mirror-signer-name"),
    ],
)
def test_csr_api_settings_refused(argv, message):
    with pytest.raises(SettingsError, match=message):
        parse_serve_args(argv, {})


def test_csr_api_defaults():
    settings = parse_serve_args(["--signer=kubernetes-csr", "--signer-name=example.com/ca", "--root-ca-file=/r"], {})
    assert settings.approve_certificate_signing_requests is True
    assert settings.preserve_certificate_signing_requests is False
    assert settings.mirror_certificate_signing_requests is False
    assert (settings.mirror_signer_name, settings.mirror_retention) == ("meshsigner.io/audit", 3600)


class _RecordingApi:
    """Stands in for the mirror's API client: accepts every write."""

    def __init__(self) -> None:
        self.clock = NoApi().clock
        self.metrics = KubeMetrics(CollectorRegistry())

    async def create(self, resource, namespace, body):
        return {**body, "metadata": {**body["metadata"], "name": "meshsigner-audit-x", "uid": "u"}}

    async def update_approval(self, name, body):
        return body

    async def replace_status(self, resource, namespace, name, body):
        return body


async def test_mirror_writes_wait_while_workload_requests_are_signed():
    registry = CollectorRegistry()
    mirror = AuditMirror(_RecordingApi(), MirrorOptions(), registry=registry)
    stop = asyncio.Event()
    writers = asyncio.create_task(mirror.run(stop))

    def written() -> float:
        return registry.get_sample_value("meshsigner_mirror_written_total", {"decision": "allowed"}) or 0.0

    try:
        mirror.signing_started()  # a workload request is inside the backend
        mirror.submit(_entry(True))
        for _ in range(20):  # let the writers run as far as they can
            await asyncio.sleep(0)
        assert written() == 0
        assert registry.get_sample_value("meshsigner_mirror_queued") == 1
        mirror.signing_finished()
        async with asyncio.timeout(5):
            await mirror.drained()
        assert written() == 1
    finally:
        stop.set()
        await writers
