"""Pure logic of in-cluster mode: CertificateRequest terminal states, chain verification against pinned roots,
usages, runtime issuer ConfigMaps, issuer judgement, leftovers, TokenReview judgement, the token bucket."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.cert_manager import workload_usages
from bridge.certificate_request_watch import CertificateRequestWatch, Issued, terminal_state
from bridge.cleanup import leftovers
from bridge.errors import BackendUnavailable, IssuerDenied, IssuerFailed
from bridge.issuer_check import IssuerState, judge_issuer
from bridge.kube import TokenBucket, as_kube_error
from bridge.root_bundle import RootBundle, parse_roots
from bridge.runtime_issuer import IssuerRef, IssuerSelector, issuer_from_config_map
from signer.auth.tokenreview import identity_from_review, token_expiry
from signer.errors import AuthenticationFailed
from tests.support.clock import ManualClock
from tests.support.csr_builder import key_usage, make_csr
from tests.support.watch_source import NoApi

NOW = datetime.now(UTC)


def _ca(name: str, issuer=None, days: int = 30):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[1], issuer[0].subject)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer_key, hashes.SHA256())
    )
    return cert, key


def _leaf(parent):
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(parent[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://td/ns/a/sa/b")]), True)
        .sign(parent[1], hashes.SHA256())
    )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _cr(name: str = "meshsigner-x", uid: str = "u1", **status) -> dict:
    return {"metadata": {"name": name, "uid": uid}, "status": status}


def _condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


# --- terminal states -------------------------------------------------------------------------------------------
def test_terminal_states():
    assert terminal_state(_cr()) is None
    assert terminal_state(_cr(conditions=[_condition("Approved")])) is None
    assert terminal_state(_cr(conditions=[_condition("Ready", "False", "Pending")])) is None
    issued = terminal_state(_cr(certificate=base64.b64encode(b"PEM").decode(), ca=base64.b64encode(b"CA").decode()))
    assert issued == Issued(b"PEM", b"CA")
    denied = terminal_state(_cr(conditions=[_condition("Denied", message="no way")]))
    assert isinstance(denied, IssuerDenied) and denied.detail == "no way"
    failed = terminal_state(_cr(conditions=[_condition("Ready", "False", "Failed", "vault down")]))
    assert isinstance(failed, BackendUnavailable) and failed.reason == "CERTIFICATE_REQUEST_FAILED"
    invalid = terminal_state(_cr(conditions=[_condition("InvalidRequest", message="bad csr")]))
    assert isinstance(invalid, IssuerFailed)
    long = terminal_state(_cr(conditions=[_condition("Denied", message="x" * 5000)]))
    assert isinstance(long, IssuerDenied) and len(long.detail) == 200


async def test_watch_resolves_by_uid_and_keeps_early_events():
    watch = CertificateRequestWatch(NoApi(), "istio-system")
    signed = {"certificate": base64.b64encode(b"PEM").decode()}
    # an event for the same name but another UID never resolves the waiter
    future = watch.register("a", "uid-a")
    watch.on_event("MODIFIED", _cr("a", "other-uid", **signed))
    assert not future.done()
    watch.on_event("MODIFIED", _cr("a", "uid-a", **signed))
    assert (await future).certificate_pem == b"PEM"
    # the terminal event arrived before the create returned: the registration finds it
    watch.on_event("MODIFIED", _cr("b", "uid-b", **signed))
    assert (await watch.register("b", "uid-b")).certificate_pem == b"PEM"
    # deleted while awaited
    future = watch.register("c", "uid-c")
    watch.on_event("DELETED", _cr("c", "uid-c"))
    with pytest.raises(BackendUnavailable):
        await future
    # a relist after 410 resolves what finished while the watch was down
    future = watch.register("d", "uid-d")
    watch.on_relist([_cr("d", "uid-d", conditions=[_condition("Denied")])])
    with pytest.raises(IssuerDenied):
        await future
    assert watch.waiting == 0


# --- root bundle (chain verification: test_certificates.py) -------------------------------------------------
def test_root_bundle_file_keeps_the_last_good_bundle(tmp_path):
    first, second = _ca("first"), _ca("second")
    path = tmp_path / "roots.pem"
    path.write_bytes(_pem(first[0]))
    bundle = RootBundle(path)
    assert bundle.ready and bundle.roots == (first[0],)
    path.write_bytes(_pem(first[0], second[0]))
    assert bundle.reload() and len(bundle.roots) == 2
    for garbage in (b"garbage", b"", _pem(_leaf(first))):
        path.write_bytes(garbage)
        assert not bundle.reload()
        assert len(bundle.roots) == 2
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        RootBundle(path)
    with pytest.raises(ValueError, match="not a CA"):
        parse_roots(_pem(_leaf(first)), what="x")


def test_bad_root_bundle_file_is_reported_once_per_content(tmp_path):
    """The watch re-reads the file every second: a bad file is logged and counted once, not every tick."""
    from loguru import logger
    from prometheus_client import CollectorRegistry

    from bridge.metrics import BridgeMetrics

    good = _ca("good")
    path = tmp_path / "roots.pem"
    path.write_bytes(_pem(good[0]))
    registry = CollectorRegistry()
    bundle = RootBundle(path, BridgeMetrics(registry))
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message)), level="ERROR")

    def rejections() -> float:
        return registry.get_sample_value("meshsigner_root_bundle_rejections_total") or 0.0

    try:
        path.write_bytes(b"garbage")
        assert not any(bundle.reload() for _ in range(5))
        assert (len(errors), rejections()) == (1, 1.0)
        path.write_bytes(_pem(_leaf(good)))  # another bad content is news
        assert not any(bundle.reload() for _ in range(5))
        assert (len(errors), rejections()) == (2, 2.0)
        path.unlink()  # unreadable: once too
        assert not any(bundle.reload() for _ in range(5))
        assert (len(errors), rejections()) == (3, 3.0)
        path.write_bytes(_pem(good[0]))  # back to the active bundle, then the first bad content again
        assert not bundle.reload()
        path.write_bytes(b"garbage")
        assert not bundle.reload()
        assert (len(errors), rejections()) == (4, 4.0)
        assert bundle.roots == (good[0],)
    finally:
        logger.remove(sink)


def test_unpinned_bundle_adopts_status_ca():
    bundle = RootBundle(None)
    assert not bundle.ready and not bundle.pinned
    root = _ca("tofu")
    bundle.adopt(_pem(root[0]))
    assert bundle.ready and bundle.roots == (root[0],)
    with pytest.raises(ValueError):
        bundle.adopt(b"garbage")
    assert bundle.roots == (root[0],)


# --- usages ----------------------------------------------------------------------------------------------------
def test_usages_follow_the_csr():
    plain = x509.load_pem_x509_csr(make_csr(["spiffe://td/ns/a/sa/b"]).encode())
    assert set(workload_usages(plain)) == {"digital signature", "key encipherment", "client auth", "server auth"}
    narrow = x509.load_pem_x509_csr(
        make_csr(
            ["spiffe://td/ns/a/sa/b"],
            extensions=[
                (key_usage(digital_signature=True), True),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            ],
        ).encode()
    )
    assert workload_usages(narrow) == ["digital signature", "client auth"]


# --- issuers ---------------------------------------------------------------------------------------------------
def test_runtime_config_map_keys():
    assert issuer_from_config_map({"issuer-name": "a", "issuer-kind": "ClusterIssuer", "issuer-group": "g"}) == (
        IssuerRef("a", "ClusterIssuer", "g")
    )
    assert issuer_from_config_map({"issuer-name": "a", "issuer-kind": "Issuer"}) is None
    assert issuer_from_config_map({"issuer-name": " ", "issuer-kind": "Issuer", "issuer-group": "g"}) is None
    assert issuer_from_config_map(None) is None


def test_selector_falls_back_to_static_issuer():
    static = IssuerRef("static")
    selector = IssuerSelector(static, kube=NoApi(), config_map_namespace="ns", config_map_name="cfg")
    heard: list[IssuerRef | None] = []
    selector.subscribe(heard.append)
    selector.on_event("ADDED", {"data": {"issuer-name": "rt", "issuer-kind": "Issuer", "issuer-group": "g"}})
    assert selector.current == IssuerRef("rt", "Issuer", "g")
    selector.on_event("MODIFIED", {"data": {"issuer-name": "rt"}})  # incomplete: kept
    assert selector.current == IssuerRef("rt", "Issuer", "g")
    selector.on_event("DELETED", {})
    assert selector.current == static
    assert heard == [IssuerRef("rt", "Issuer", "g"), static]
    runtime_only = IssuerSelector(None)
    assert not runtime_only.ready


def test_issuer_judgement():
    assert judge_issuer(None)[0] is IssuerState.MISSING
    assert judge_issuer({"spec": {"acme": {"server": "x"}}})[0] is IssuerState.ACME
    assert judge_issuer({"spec": {"ca": {}}})[0] is IssuerState.NOT_READY
    ready = {"spec": {"ca": {}}, "status": {"conditions": [_condition("Ready")]}}
    assert judge_issuer(ready)[0] is IssuerState.READY
    broken = {"status": {"conditions": [_condition("Ready", "False", "ErrGetKeyPair", "secret not found")]}}
    state, reason = judge_issuer(broken)
    assert state is IssuerState.NOT_READY and "secret not found" in reason


def test_leftovers_by_age():
    def obj(seconds_ago: float) -> dict:
        stamp = (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"metadata": {"name": f"n{seconds_ago}", "creationTimestamp": stamp}}

    old = leftovers([obj(5), obj(100), {"metadata": {}}], older_than_seconds=60, now=NOW)
    assert [o["metadata"]["name"] for o in old] == ["n100"]


# --- TokenReview judgement -------------------------------------------------------------------------------------
GOOD: dict[str, Any] = {
    "authenticated": True,
    "audiences": ["istio-ca"],
    "user": {
        "username": "system:serviceaccount:ns:sa",
        "uid": "sa-uid",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"],
        "extra": {
            "authentication.kubernetes.io/pod-name": ["p"],
            "authentication.kubernetes.io/pod-uid": ["p-uid"],
        },
    },
}


def test_token_review_judgement():
    identity = identity_from_review(GOOD, ("istio-ca",))
    assert (identity.namespace, identity.service_account, identity.pod_name, identity.pod_uid) == (
        "ns",
        "sa",
        "p",
        "p-uid",
    )
    assert identity.service_account_uid == "sa-uid"


@pytest.mark.parametrize(
    "change",
    [
        {"error": "token expired"},
        {"authenticated": False},
        {"audiences": []},
        {"audiences": ["other"]},
        {"user": {**GOOD["user"], "groups": ["system:authenticated"]}},
        {"user": {**GOOD["user"], "username": "alice"}},
        {"user": {**GOOD["user"], "username": "system:serviceaccount:ns"}},
        {"user": {**GOOD["user"], "username": "system:serviceaccount:ns:sa:extra"}},
    ],
    ids=["error", "unauthenticated", "no-audience", "other-audience", "not-sa-group", "user", "3-parts", "5-parts"],
)
def test_token_review_refusals(change):
    with pytest.raises(AuthenticationFailed):
        identity_from_review({**GOOD, **change}, ("istio-ca",))


def test_token_expiry_is_read_without_trusting_it():
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).decode().rstrip("=")
    assert token_expiry(f"h.{payload}.s") == 1234.0
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.c") is None


# --- seam helpers ----------------------------------------------------------------------------------------------
def test_token_bucket_allows_burst_then_paces():
    clock = ManualClock()
    bucket = TokenBucket(qps=10, burst=3, clock=clock)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.delay() == pytest.approx(0.1)
    asyncio.run(clock.advance(1.0))
    assert bucket.delay() == 0.0


def test_api_errors_map_to_seam_classes():
    from kubernetes.client.rest import ApiException

    from bridge.kube import KubeConflict, KubeForbidden, KubeGone, KubeInvalid, KubeNotFound, KubeUnavailable

    cases = {
        404: KubeNotFound,
        409: KubeConflict,
        410: KubeGone,
        403: KubeForbidden,
        422: KubeInvalid,
        429: KubeUnavailable,
        503: KubeUnavailable,
    }
    for status, kind in cases.items():
        assert isinstance(as_kube_error(ApiException(status=status, reason="x")), kind)
    assert isinstance(as_kube_error(ConnectionRefusedError()), KubeUnavailable)


@pytest.mark.parametrize(
    "transport_error",
    [
        ConnectionResetError(),
        TimeoutError(),
        __import__("ssl").SSLError("handshake failed"),
        __import__("urllib3").exceptions.ReadTimeoutError(None, "/api", "read timed out"),
        __import__("urllib3").exceptions.NewConnectionError(None, "refused"),
        __import__("urllib3").exceptions.ProtocolError("connection broken"),
    ],
    ids=["reset", "timeout", "tls", "read-timeout", "refused", "protocol"],
)
def test_transport_errors_are_unavailable(transport_error):
    error = as_kube_error(transport_error)
    assert error is not None and type(error).__name__ == "KubeUnavailable" and error.status == 0


@pytest.mark.parametrize(
    "bug",
    [TypeError("x"), AttributeError("x"), KeyError("x"), ValueError("x"), ZeroDivisionError()],
    ids=["type", "attribute", "key", "value", "zero-division"],
)
def test_programming_errors_are_not_outages(bug):
    """Before: every exception became KubeUnavailable, so a bug was retried forever as an API outage."""
    assert as_kube_error(bug) is None


def test_request_timeout_408_is_unavailable_not_invalid():
    """408: the API server gave up on the request (retry may help); it says nothing wrong about the request."""
    from kubernetes.client.rest import ApiException

    from bridge.kube import KubeInvalid, KubeUnavailable

    error = as_kube_error(ApiException(status=408, reason="Request Timeout"))
    assert isinstance(error, KubeUnavailable) and not isinstance(error, KubeInvalid)
    assert error.status == 408
    assert isinstance(as_kube_error(ApiException(status=400, reason="x")), KubeInvalid)


@pytest.mark.parametrize(
    ("kind", "group", "plural", "namespaced"),
    [
        ("Issuer", "cert-manager.io", "issuers", True),
        ("ClusterIssuer", "cert-manager.io", "clusterissuers", False),
        ("AWSPCAIssuer", "awspca.cert-manager.io", "awspcaissuers", True),
        ("AWSPCAClusterIssuer", "awspca.cert-manager.io", "awspcaclusterissuers", False),
        ("GoogleCASClusterIssuer", "cas-issuer.jetstack.io", "googlecasclusterissuers", False),
        ("StepClusterIssuer", "certmanager.step.sm", "stepclusterissuers", False),
        ("VenafiIssuer", "jetstack.io", "venafiissuers", True),
    ],
)
def test_issuer_resource_scope_follows_the_kind_suffix(kind, group, plural, namespaced):
    from bridge.kube import issuer_resource

    resource = issuer_resource(kind, group)
    assert (resource.plural, resource.namespaced) == (plural, namespaced)
    assert (resource.group, resource.version) == (group, "v1")


def test_certificate_request_wait_fires_before_the_rpc_bound():
    from bridge.cert_manager import CertManagerOptions, certificate_request_wait

    assert certificate_request_wait(30, 30) == pytest.approx(27)  # the defaults: it must be able to fire first
    assert certificate_request_wait(10, 30) == 10
    assert certificate_request_wait(60, 30) == pytest.approx(27)
    options = CertManagerOptions(timeout_seconds=30, request_timeout_seconds=30)
    assert options.wait_seconds("workload") == pytest.approx(27)
    assert options.wait_seconds("serving") == 30  # no RPC bounds the serving certificate
    assert CertManagerOptions(timeout_seconds=30).wait_seconds("workload") == 30


def test_request_outcomes():
    from bridge.cert_manager import request_outcome

    assert request_outcome("APPROVAL_FAILED") == "approve_failed"  # approval kept conflicting: not an issuer failure
    assert request_outcome("CERTIFICATE_REQUEST_DENIED") == "denied"
    assert request_outcome("CERTIFICATE_REQUEST_INVALID") == "invalid"
    assert request_outcome("CERTIFICATE_REQUEST_DELETED") == "deleted"
    assert request_outcome("CERTIFICATE_REQUEST_FAILED") == request_outcome("SOMETHING_ELSE") == "failed"


async def test_token_bucket_paces_acquirers():
    """With qps 4 and burst 2, two acquisitions pass at once and each further one waits 0.25 s of clock time."""
    clock = ManualClock()
    bucket = TokenBucket(4, 2, clock)
    acquired: list[float] = []

    async def five() -> None:
        for _ in range(5):
            await bucket.acquire()
            acquired.append(clock.monotonic())

    task = asyncio.create_task(five())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(acquired) == 2 and clock.sleeper_count == 1  # the burst passed; the third waits
    for expected in (3, 4, 5):
        await clock.advance(0.125)
        assert len(acquired) == expected - 1  # not before its token
        await clock.advance(0.125)
        assert len(acquired) == expected
    await task
    assert acquired == [0.0, 0.0, 0.25, 0.5, 0.75]
