"""The TokenReview authenticator against the real API server: what it accepts, what it refuses, and that an
unreachable API server is UNAVAILABLE, never UNAUTHENTICATED."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.kube import KubeClient, KubeMetrics, KubeOptions, Obj
from clocks import SystemClock
from signer.auth.tokenreview import TokenReviewAuthenticator
from signer.errors import AuthenticationFailed, TemporarilyUnavailable
from signer.metrics import AuthMetrics
from tests.e2e.calls import create
from tests.support.csr_builder import make_csr


@pytest.fixture
def kube(kube_plane):
    registry = CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    seam.registry = registry
    yield seam
    seam.close()


def _authenticator(kube, cache_seconds: float = 30.0) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(
        kube,
        audiences=("istio-ca",),
        metrics=AuthMetrics(kube.registry),
        cache_seconds=cache_seconds,
        clock=SystemClock(),
    )


def _reviews(kube) -> float:
    return (
        kube.registry.get_sample_value(
            "meshsigner_kube_api_requests_total", {"verb": "create", "resource": "tokenreviews", "code": "2xx"}
        )
        or 0.0
    )


async def test_token_request_token_is_a_workload(kube, make_namespace, make_service_account, mint_token):
    ns = make_namespace("tr")
    sa = make_service_account(ns, "app")
    identity = await _authenticator(kube).authenticate(mint_token(ns, sa))
    assert (identity.namespace, identity.service_account) == (ns, sa)
    assert identity.service_account_uid
    assert identity.pod_name is None  # not bound to a pod


async def test_pod_bound_token_carries_the_pod(kube, kube_api, make_namespace, make_service_account, mint_token):
    ns = make_namespace("tr")
    sa = make_service_account(ns, "app")
    pod = client.CoreV1Api(kube_api).create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="app-0"),
            spec=client.V1PodSpec(service_account_name=sa, containers=[client.V1Container(name="c", image="x")]),
        ),
    )
    token = mint_token(ns, sa, bound_object={"kind": "Pod", "name": "app-0", "uid": pod.metadata.uid})
    identity = await _authenticator(kube).authenticate(token)
    assert (identity.pod_name, identity.pod_uid) == ("app-0", pod.metadata.uid)


@pytest.mark.parametrize("audience", ["some-other-audience", None], ids=["other-audience", "api-server-audience"])
async def test_wrong_audience_is_refused(kube, make_namespace, make_service_account, mint_token, audience):
    ns = make_namespace("tr")
    sa = make_service_account(ns)
    with pytest.raises(AuthenticationFailed) as refused:
        await _authenticator(kube).authenticate(mint_token(ns, sa, audience=audience))
    assert refused.value.reason in ("TOKEN_REJECTED", "TOKEN_AUDIENCE")


async def test_garbage_token_is_refused(kube):
    with pytest.raises(AuthenticationFailed):
        await _authenticator(kube).authenticate("x" * 1024)


async def test_deleted_service_account_token_is_refused_after_the_cache_bound(
    kube, kube_api, make_namespace, make_service_account, mint_token
):
    ns = make_namespace("tr")
    sa = make_service_account(ns)
    token = mint_token(ns, sa)
    authenticator = _authenticator(kube, cache_seconds=1.0)
    await authenticator.authenticate(token)
    client.CoreV1Api(kube_api).delete_namespaced_service_account(sa, ns)
    deadline = time.monotonic() + 30
    while True:  # the API server's own SA informer may lag a moment behind the delete
        await asyncio.sleep(0.5)
        try:
            await authenticator.authenticate(token)
        except AuthenticationFailed as refused:
            assert refused.reason == "TOKEN_REJECTED"
            break
        assert time.monotonic() < deadline, "a deleted ServiceAccount's token kept authenticating"


async def test_cache_and_in_flight_sharing_save_reviews(kube, make_namespace, make_service_account, mint_token):
    ns = make_namespace("tr")
    sa = make_service_account(ns)
    token = mint_token(ns, sa)
    authenticator = _authenticator(kube)
    before = _reviews(kube)
    identities = await asyncio.gather(*(authenticator.authenticate(token) for _ in range(20)))
    identities.append(await authenticator.authenticate(token))
    assert {(i.namespace, i.service_account) for i in identities} == {(ns, sa)}
    assert _reviews(kube) - before == 1


async def test_cancelled_caller_does_not_fail_the_others_sharing_its_review(
    kube_plane, make_namespace, make_service_account, mint_token
):
    """The caller that started a shared review goes away (client cancelled, deadline): the callers sharing the
    same review still get its answer, and no second review is made."""
    ns = make_namespace("tr")
    sa = make_service_account(ns)
    token = mint_token(ns, sa)
    entered, release = threading.Event(), threading.Event()

    class ReviewHeldBack(KubeClient):
        async def review_token(self, token: str, audiences: tuple[str, ...]) -> Obj:
            entered.set()
            await asyncio.to_thread(release.wait, 20)  # in flight until the first caller has been cancelled
            return await super().review_token(token, audiences)

    registry = CollectorRegistry()
    kube = ReviewHeldBack(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    kube.registry = registry  # read by _reviews, as on the fixture's client
    authenticator = _authenticator(kube)
    before = _reviews(kube)
    first = asyncio.create_task(authenticator.authenticate(token))
    assert await asyncio.to_thread(entered.wait, 20), "the review never started"
    others = [asyncio.create_task(authenticator.authenticate(token)) for _ in range(3)]
    await asyncio.sleep(0.05)  # the others are waiting on the shared review
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    identities = await asyncio.gather(*others)
    assert {(i.namespace, i.service_account) for i in identities} == {(ns, sa)}
    assert _reviews(kube) - before == 1
    assert (await authenticator.authenticate(token)).service_account == sa  # cached by the review nobody started
    assert _reviews(kube) - before == 1
    kube.close()


async def test_api_server_down_is_unavailable_not_unauthenticated(
    kube, kube_plane, make_namespace, make_service_account, mint_token
):
    if kube_plane.external:
        pytest.skip("external cluster: no process control")
    ns = make_namespace("tr")
    sa = make_service_account(ns)
    cached, fresh = mint_token(ns, sa), mint_token(ns, sa, seconds=1200)
    authenticator = _authenticator(kube)
    await authenticator.authenticate(cached)
    kube_plane.stop_apiserver()
    try:
        with pytest.raises(TemporarilyUnavailable):
            await authenticator.authenticate(fresh)
        # a review made moments ago still counts (bounded by the cache duration and the token's expiry)
        assert (await authenticator.authenticate(cached)).service_account == sa
    finally:
        kube_plane.start_apiserver()
    assert (await authenticator.authenticate(fresh)).service_account == sa


def test_serve_answers_unauthenticated_for_refused_tokens(
    make_namespace, make_service_account, mint_token, ca_cluster_issuer, signer_factory
):
    signer = signer_factory(make_namespace("istio-system"), ca_cluster_issuer)
    ns = make_namespace("workload")
    sa = make_service_account(ns)
    csr = make_csr([f"spiffe://cluster.local/ns/{ns}/sa/{sa}"])
    stub = signer.stub()
    for token in (mint_token(ns, sa, audience="not-istio"), "garbage", None):
        code, chain, _ = create(stub, csr, token)
        assert (code, chain) == (grpc.StatusCode.UNAUTHENTICATED, [])
    code, _, details = create(stub, csr, mint_token(ns, sa))
    assert code == grpc.StatusCode.OK, details
    assert "garbage" not in signer.server.log() and "eyJ" not in signer.server.log()  # no token in the log
