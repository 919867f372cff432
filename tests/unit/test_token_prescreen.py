"""The defences of issue 16 as pure logic: the offline pre-screen, the cluster's keys and their rate-limited
refresh, the negative TokenReview cache, the per-peer refusal limit, the separate API budgets, and the offline
in-cluster authenticator's binding checks against the informers."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.kube import Budget, KubeUnavailable, split_budgets
from bridge.pods import PodIndex, PodInfo
from bridge.service_accounts import ServiceAccountIndex
from signer.auth.base import WorkloadIdentity
from signer.auth.cluster_jwks import ClusterJwksAuthenticator
from signer.auth.cluster_keys import ClusterIssuerKeys, KeyRefreshMetrics
from signer.auth.prescreen import PrescreenMetrics, TokenPrescreen
from signer.auth.refusal_limit import PeerLimitMetrics, PeerRefusalLimiter, calling_peer, peer_address
from signer.auth.screened import ScreenedAuthenticator
from signer.auth.tokenreview import TokenReviewAuthenticator
from signer.errors import AuthenticationFailed, Overloaded, TemporarilyUnavailable
from signer.metrics import AuthMetrics
from tests.support.clock import ManualClock
from tests.support.tokens import TokenIssuer
from tests.support.waiting import until_true

ISSUER = "https://kubernetes.default.svc"
SA_UID, POD_UID = "sa-uid", "pod-uid"


@pytest.fixture(scope="module")
def cluster() -> TokenIssuer:
    return TokenIssuer(issuer=ISSUER)


@pytest.fixture(scope="module")
def stranger() -> TokenIssuer:
    return TokenIssuer(issuer=ISSUER)  # the cluster's issuer name, other keys


def _clock() -> ManualClock:
    return ManualClock(start=datetime.now(UTC))  # the test issuers mint tokens on the real clock


class Discovery:
    """The API server's OIDC discovery as the key source reads it; ``reads`` counts JWKS reads."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self.jwks: dict[str, Any] = issuer.jwks()
        self.issuer = issuer.issuer
        self.reads = 0
        self.down = False

    async def get_discovery_document(self, path: str) -> dict[str, Any]:
        if self.down:
            raise KubeUnavailable(503, "down")
        if path == "/.well-known/openid-configuration":
            return {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/openid/v1/jwks"}
        self.reads += 1
        return self.jwks


async def _keys(discovery: Discovery, clock: ManualClock, registry: CollectorRegistry) -> ClusterIssuerKeys:
    keys = ClusterIssuerKeys(discovery, clock=clock, metrics=KeyRefreshMetrics(registry), min_refresh_interval=10)
    await keys.refresh("start")
    return keys


def _refusals(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("meshsigner_token_prescreen_refusals_total", {"reason": reason}) or 0.0


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def test_prescreen_passes_a_cluster_token_and_refuses_forgeries_by_reason(cluster, stranger):
    clock, registry = _clock(), CollectorRegistry()
    prescreen = TokenPrescreen(
        audiences=("istio-ca",),
        clock=clock,
        metrics=PrescreenMetrics(registry),
        keys=await _keys(Discovery(cluster), clock, registry),
    )
    passed = await prescreen.screen(cluster.token("apps", "web", algorithm="RS256"))
    assert passed.claims["sub"] == "system:serviceaccount:apps:web"
    header = _segment({"alg": "none"})
    forgeries = {
        "TOKEN_MALFORMED": ["not-a-jwt", "a.b", f"{header}.{header}.sig=="],
        "TOKEN_ALGORITHM": [f"{header}.{_segment({'iss': ISSUER})}.c2ln"],
        "TOKEN_ISSUER": [TokenIssuer(issuer="https://attacker.example").token()],
        "TOKEN_AUDIENCE": [cluster.token(audience="some-api")],
        "TOKEN_EXPIRED": [cluster.token(lifetime=-120)],
        "TOKEN_UNKNOWN_KEY": [stranger.token(kid="invented")],
        "TOKEN_SIGNATURE": [stranger.token(algorithm="RS256")],  # names the cluster's kid, other key
    }
    for reason, tokens in forgeries.items():
        for token in tokens:
            with pytest.raises(AuthenticationFailed) as refused:
                await prescreen.screen(token)
            assert refused.value.reason == reason
        assert _refusals(registry, reason) == len(tokens)
    assert registry.get_sample_value("meshsigner_token_prescreen_passed_total") == 1


async def test_prescreen_with_a_configured_issuer_and_no_keys_still_refuses_foreign_tokens(cluster):
    prescreen = TokenPrescreen(
        audiences=("istio-ca",), clock=_clock(), metrics=PrescreenMetrics(CollectorRegistry()), issuer=ISSUER
    )
    await prescreen.screen(TokenIssuer(issuer=ISSUER).token())  # no keys known: the signature is the authority's
    with pytest.raises(AuthenticationFailed, match="TOKEN_ISSUER"):
        await prescreen.screen(TokenIssuer(issuer="https://attacker.example").token())


async def test_unknown_kid_refreshes_at_most_once_per_interval_and_finds_a_rotated_key(cluster):
    clock, registry = _clock(), CollectorRegistry()
    discovery = Discovery(cluster)
    keys = await _keys(discovery, clock, registry)
    prescreen = TokenPrescreen(audiences=("istio-ca",), clock=clock, metrics=PrescreenMetrics(registry), keys=keys)
    flood = [cluster.token(kid=f"invented-{index}") for index in range(50)]
    await clock.advance(10)
    results = await asyncio.gather(*(prescreen.screen(token) for token in flood), return_exceptions=True)
    assert all(isinstance(result, AuthenticationFailed) for result in results)
    assert discovery.reads == 2  # the start, then one shared refresh for fifty invented key ids
    rotated = TokenIssuer(issuer=ISSUER)
    discovery.jwks = {"keys": [{**key, "kid": "new-" + key["kid"]} for key in rotated.jwks()["keys"]]}
    with pytest.raises(AuthenticationFailed, match="TOKEN_UNKNOWN_KEY"):
        await prescreen.screen(rotated.token(kid="new-ec-1"))  # within the interval: not re-read yet
    await clock.advance(10)
    await prescreen.screen(rotated.token(kid="new-ec-1"))
    assert discovery.reads == 3


async def test_keys_survive_a_failed_refresh(cluster):
    clock, registry = _clock(), CollectorRegistry()
    discovery = Discovery(cluster)
    keys = await _keys(discovery, clock, registry)
    discovery.down = True
    assert not await keys.refresh()
    assert keys.ready and keys.issuer == ISSUER and keys.keys is not None and "ec-1" in keys.keys


class Reviewer:
    def __init__(self) -> None:
        self.reviews = 0

    async def review_token(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        self.reviews += 1
        return {"authenticated": False, "error": "invalid bearer token"}


async def test_a_rejected_token_is_not_reviewed_again_for_the_negative_cache_duration():
    clock, reviewer = _clock(), Reviewer()
    authenticator = TokenReviewAuthenticator(
        reviewer,
        audiences=("istio-ca",),
        metrics=AuthMetrics(CollectorRegistry()),
        clock=clock,
        negative_cache_seconds=10,
    )
    for _ in range(5):
        with pytest.raises(AuthenticationFailed, match="TOKEN_REJECTED"):
            await authenticator.authenticate("rejected-token")
    assert reviewer.reviews == 1
    await clock.advance(10)
    with pytest.raises(AuthenticationFailed):
        await authenticator.authenticate("rejected-token")
    assert reviewer.reviews == 2


def _limiter(clock: ManualClock, registry: CollectorRegistry, max_peers: int = 10_000) -> PeerRefusalLimiter:
    return PeerRefusalLimiter(rate=1, burst=3, clock=clock, metrics=PeerLimitMetrics(registry), max_peers=max_peers)


async def test_a_failing_peer_is_limited_and_others_are_not():
    clock, registry = _clock(), CollectorRegistry()
    limiter = _limiter(clock, registry)
    for _ in range(3):
        limiter.admit("10.0.0.7")
        limiter.failed("10.0.0.7")
    with pytest.raises(Overloaded, match="AUTH_FAILURES_RATE_LIMITED"):
        limiter.admit("10.0.0.7")
    limiter.admit("10.0.0.8")  # another address: untouched
    assert registry.get_sample_value("meshsigner_auth_peer_limited_total", {"peer": "10.0.0.7"}) == 1
    await clock.advance(1)  # one failure regained
    limiter.admit("10.0.0.7")


def test_the_peer_table_is_bounded_and_evicts_the_least_recent():
    clock, registry = _clock(), CollectorRegistry()
    limiter = _limiter(clock, registry, max_peers=100)
    for index in range(1000):
        limiter.failed(f"10.1.{index // 256}.{index % 256}")
    assert len(limiter) == 100


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:51234", "10.0.0.7"),
        ("ipv6:[fd00::7]:51234", "fd00::7"),
        ("ipv6:%5B::1%5D:51234", "::1"),
        ("unix:/run/sock", "unix:/run/sock"),
    ],
)
def test_peer_address_drops_the_port(peer, address):
    assert peer_address(peer) == address


class Accepting:
    ready = True

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, token: str) -> WorkloadIdentity:
        self.calls += 1
        return WorkloadIdentity("apps", "web")


async def test_screened_authenticator_charges_prescreen_refusals_to_the_peer_and_then_refuses_before_looking():
    clock, registry = _clock(), CollectorRegistry()
    inner = Accepting()
    prescreen = TokenPrescreen(audiences=("istio-ca",), clock=clock, metrics=PrescreenMetrics(registry), issuer=ISSUER)
    screened = ScreenedAuthenticator(inner, prescreen=prescreen, limiter=_limiter(clock, registry))
    with calling_peer("ipv4:10.0.0.7:4000"):
        for _ in range(3):
            with pytest.raises(AuthenticationFailed):
                await screened.authenticate("garbage")
        with pytest.raises(Overloaded):
            await screened.authenticate(TokenIssuer(issuer=ISSUER).token())
    assert inner.calls == 0
    with calling_peer("ipv4:10.0.0.8:4000"):
        assert (await screened.authenticate(TokenIssuer(issuer=ISSUER).token())).principal == "apps/web"


def test_review_budget_is_separate_from_the_signing_path():
    clock = _clock()
    budgets = split_budgets(50, 100, 0.2, clock)
    assert (budgets[Budget.REVIEW].burst, budgets[Budget.DEFAULT].burst) == (20, 80)
    review_delays = [budgets[Budget.REVIEW].delay() for _ in range(200)]
    assert review_delays[-1] > 10  # a review flood queues behind its own budget...
    assert budgets[Budget.DEFAULT].delay() == 0  # ...and the signing path's next write is not delayed


def _pod(name: str, uid: str, service_account: str = "web") -> PodInfo:
    return PodInfo("apps", name, uid, service_account, "node-a", "Running")


def _service_account(name: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "apps", "name": name, "uid": uid}}


def _bound_token(issuer: TokenIssuer, pod: str = "web-0", pod_uid: str = POD_UID, sa_uid: str = SA_UID) -> str:
    claims = {
        "namespace": "apps",
        "serviceaccount": {"name": "web", "uid": sa_uid},
        "pod": {"name": pod, "uid": pod_uid},
    }
    return issuer.token("apps", "web", extra={"kubernetes.io": claims})


async def test_offline_in_cluster_authentication_follows_deletions(cluster):
    clock, registry = _clock(), CollectorRegistry()
    service_accounts, pods = ServiceAccountIndex(), PodIndex()
    authenticator = ClusterJwksAuthenticator(
        await _keys(Discovery(cluster), clock, registry),
        service_accounts=service_accounts,
        pods=pods,
        audiences=("istio-ca",),
        clock=clock,
    )
    token = _bound_token(cluster)
    with pytest.raises(TemporarilyUnavailable, match="SERVICE_ACCOUNTS_NOT_SYNCED"):
        await authenticator.authenticate(token)
    service_accounts.replace_all([_service_account("web", SA_UID)])
    with pytest.raises(TemporarilyUnavailable, match="PODS_NOT_SYNCED"):
        await authenticator.authenticate(token)
    pods.replace_all([_pod("web-0", POD_UID)])
    identity = await authenticator.authenticate(token)
    assert (identity.principal, identity.pod_name, identity.pod_uid) == ("apps/web", "web-0", POD_UID)

    pods.remove(_pod("web-0", POD_UID))
    with pytest.raises(AuthenticationFailed, match="TOKEN_POD_GONE"):
        await authenticator.authenticate(token)
    pods.upsert(_pod("web-0", "recreated-uid"))  # same name, another pod: the token was not bound to it
    with pytest.raises(AuthenticationFailed, match="TOKEN_POD_GONE"):
        await authenticator.authenticate(token)

    pods.upsert(_pod("web-1", "pod-uid-1"))
    other = _bound_token(cluster, "web-1", "pod-uid-1")
    await authenticator.authenticate(other)
    service_accounts.remove(_service_account("web", SA_UID))
    with pytest.raises(AuthenticationFailed, match="TOKEN_SERVICE_ACCOUNT_GONE"):
        await authenticator.authenticate(other)
    service_accounts.upsert(_service_account("web", "new-sa-uid"))  # recreated under the same name
    with pytest.raises(AuthenticationFailed, match="TOKEN_SERVICE_ACCOUNT_GONE"):
        await authenticator.authenticate(other)


async def test_offline_in_cluster_authentication_refuses_forgeries_and_waits_for_keys(cluster, stranger):
    clock, registry = _clock(), CollectorRegistry()
    discovery = Discovery(cluster)
    keys = ClusterIssuerKeys(discovery, clock=clock, metrics=KeyRefreshMetrics(registry))
    service_accounts, pods = ServiceAccountIndex(), PodIndex()
    service_accounts.replace_all([_service_account("web", SA_UID)])
    pods.replace_all([_pod("web-0", POD_UID)])
    authenticator = ClusterJwksAuthenticator(
        keys, service_accounts=service_accounts, pods=pods, audiences=("istio-ca",), clock=clock
    )
    assert not authenticator.ready
    with pytest.raises(TemporarilyUnavailable, match="JWKS_UNAVAILABLE"):
        await authenticator.authenticate(_bound_token(cluster))
    await keys.refresh("start")
    assert authenticator.ready
    await authenticator.authenticate(_bound_token(cluster))
    with pytest.raises(AuthenticationFailed, match="TOKEN_SIGNATURE"):
        await authenticator.authenticate(_bound_token(stranger))


async def test_cluster_keys_are_read_at_start_and_periodically(cluster):
    clock, registry = _clock(), CollectorRegistry()
    discovery = Discovery(cluster)
    discovery.down = True
    keys = ClusterIssuerKeys(discovery, clock=clock, metrics=KeyRefreshMetrics(registry), refresh_interval=300)
    stop = asyncio.Event()
    task = asyncio.create_task(keys.run(stop))
    await until_true(lambda: clock.sleeper_count == 1, "the first read failed and a retry is armed")
    assert not keys.ready  # the API is down at start: retried with backoff
    discovery.down = False
    await clock.advance(1)
    await until_true(lambda: keys.ready, "the retry read the keys")
    await until_true(lambda: clock.sleeper_count == 1, "the periodic refresh is armed")
    await clock.advance(299)
    assert discovery.reads == 1
    await clock.advance(1)
    await until_true(lambda: discovery.reads == 2, "the periodic refresh read the keys again")
    stop.set()
    await task


def test_settings_of_the_defences():
    from signer.settings import SettingsError, parse_serve_args

    base = ["--signer=local", "--local-ca-dir=/tmp/x"]
    settings = parse_serve_args([*base, "--authenticator=jwks"], {})  # no file: the cluster's keys
    assert settings.token_prescreen and settings.peer_auth_failure_burst == 20
    assert settings.kube_api_token_review_share == 0.2 and settings.jwks_min_refresh_interval == 10
    assert parse_serve_args(settings.to_argv(), {}) == settings
    with pytest.raises(SettingsError, match="--token-issuer"):
        parse_serve_args([*base, "--authenticator=jwks", "--jwks-file=j"], {})
    with pytest.raises(SettingsError, match="between 0 and 1"):
        parse_serve_args([*base, "--kube-api-token-review-share=1"], {})
    env = {"MESHSIGNER_PEER_AUTH_FAILURE_BURST": "0", "MESHSIGNER_TOKEN_PRESCREEN": "false"}
    settings = parse_serve_args(base, env)
    assert settings.peer_auth_failure_burst == 0 and not settings.token_prescreen


async def test_a_key_removed_from_the_cluster_stops_authenticating_at_once(cluster):
    clock, registry = _clock(), CollectorRegistry()
    discovery = Discovery(cluster)
    keys = await _keys(discovery, clock, registry)
    service_accounts, pods = ServiceAccountIndex(), PodIndex()
    service_accounts.replace_all([_service_account("web", SA_UID)])
    pods.replace_all([_pod("web-0", POD_UID)])
    authenticator = ClusterJwksAuthenticator(
        keys, service_accounts=service_accounts, pods=pods, audiences=("istio-ca",), clock=clock
    )
    token = _bound_token(cluster)  # signed with the EC key, kid ec-1
    await authenticator.authenticate(token)
    discovery.jwks = {"keys": [key for key in cluster.jwks()["keys"] if key["kid"] != "ec-1"]}
    assert await keys.refresh()
    with pytest.raises(AuthenticationFailed, match="TOKEN_UNKNOWN_KEY"):
        await authenticator.authenticate(token)


def test_service_account_index_follows_events_and_ignores_a_late_deletion_of_an_earlier_account():
    from bridge.service_accounts import ServiceAccountCache

    class NoApi:  # the cache is fed by hand here; its ListWatch never runs
        metrics = None
        clock = None

    cache = ServiceAccountCache(NoApi())  # a WatchSource that is never used
    assert not cache.ready and cache.reason
    cache.on_relist([_service_account("web", "uid-1"), {"metadata": {"name": "no-namespace"}}])
    assert cache.ready and len(cache) == 1 and cache.uid("apps", "web") == "uid-1"
    cache.on_event("ADDED", _service_account("web", "uid-2"))  # recreated; the DELETED of uid-1 arrives late
    cache.on_event("DELETED", _service_account("web", "uid-1"))
    assert cache.uid("apps", "web") == "uid-2"
    cache.on_event("DELETED", _service_account("web", "uid-2"))
    assert cache.uid("apps", "web") is None


def _passed(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("meshsigner_token_prescreen_passed_total") or 0.0


async def test_a_token_the_authenticator_verified_is_not_screened_again_and_forgeries_still_are(cluster, stranger):
    clock, registry = _clock(), CollectorRegistry()
    keys = await _keys(Discovery(cluster), clock, registry)
    service_accounts, pods = ServiceAccountIndex(), PodIndex()
    service_accounts.replace_all([_service_account("web", SA_UID)])
    pods.replace_all([_pod("web-0", POD_UID)])
    inner = ClusterJwksAuthenticator(
        keys, service_accounts=service_accounts, pods=pods, audiences=("istio-ca",), clock=clock
    )
    prescreen = TokenPrescreen(audiences=("istio-ca",), clock=clock, metrics=PrescreenMetrics(registry), keys=keys)
    screened = ScreenedAuthenticator(inner, prescreen=prescreen, limiter=None)
    token = _bound_token(cluster)
    for _ in range(3):
        assert (await screened.authenticate(token)).principal == "apps/web"
    assert _passed(registry) == 1  # verified once; the next two were found among the verified tokens
    pods.remove(_pod("web-0", POD_UID))
    with pytest.raises(AuthenticationFailed, match="TOKEN_POD_GONE"):
        await screened.authenticate(token)  # the binding is still checked on every call
    with pytest.raises(AuthenticationFailed, match="TOKEN_SIGNATURE"):
        await screened.authenticate(_bound_token(stranger))
    assert _refusals(registry, "TOKEN_SIGNATURE") == 1  # refused by the pre-screen, counted there


async def test_the_prescreen_refuses_before_any_token_review_and_a_reviewed_token_is_not_screened_again(cluster):
    clock, registry = _clock(), CollectorRegistry()
    keys = await _keys(Discovery(cluster), clock, registry)

    class Approving(Reviewer):
        async def review_token(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
            self.reviews += 1
            user = {"username": "system:serviceaccount:apps:web", "groups": ["system:serviceaccounts"]}
            return {"authenticated": True, "audiences": list(audiences), "user": user}

    reviewer = Approving()
    inner = TokenReviewAuthenticator(
        reviewer, audiences=("istio-ca",), metrics=AuthMetrics(registry), clock=clock, negative_cache_seconds=10
    )
    prescreen = TokenPrescreen(audiences=("istio-ca",), clock=clock, metrics=PrescreenMetrics(registry), keys=keys)
    screened = ScreenedAuthenticator(inner, prescreen=prescreen, limiter=None)
    for forged in ("garbage", TokenIssuer(issuer="https://attacker.example").token(), cluster.token(kid="invented")):
        with pytest.raises(AuthenticationFailed):
            await screened.authenticate(forged)
    assert reviewer.reviews == 0
    token = cluster.token("apps", "web")
    for _ in range(3):
        assert (await screened.authenticate(token)).principal == "apps/web"
    assert reviewer.reviews == 1 and _passed(registry) == 1


async def test_a_screen_spares_no_check_of_the_authenticator_but_a_signature_by_its_own_key_source(cluster, stranger):
    from signer.auth.jws import parse_compact
    from signer.auth.prescreen import ScreenedToken

    clock, registry = _clock(), CollectorRegistry()
    keys = await _keys(Discovery(cluster), clock, registry)
    other_source = await _keys(Discovery(stranger), clock, CollectorRegistry())
    service_accounts, pods = ServiceAccountIndex(), PodIndex()
    service_accounts.replace_all([_service_account("web", SA_UID)])
    pods.replace_all([_pod("web-0", POD_UID)])
    authenticator = ClusterJwksAuthenticator(
        keys, service_accounts=service_accounts, pods=pods, audiences=("istio-ca",), clock=clock
    )

    def screen_claiming(source: ClusterIssuerKeys | None):
        async def screen(token: str) -> ScreenedToken:
            return ScreenedToken(parse_compact(token), source)  # a lax screen: checks nothing itself

        return screen

    forged = _bound_token(stranger)
    with pytest.raises(AuthenticationFailed, match="TOKEN_SIGNATURE"):
        await authenticator.authenticate_screened(forged, screen_claiming(other_source))  # verified elsewhere
    with pytest.raises(AuthenticationFailed, match="TOKEN_SIGNATURE"):
        await authenticator.authenticate_screened(forged, screen_claiming(None))
    foreign = TokenIssuer(issuer="https://attacker.example").token("apps", "web")
    with pytest.raises(AuthenticationFailed, match="TOKEN_ISSUER"):
        await authenticator.authenticate_screened(foreign, screen_claiming(keys))  # claims are checked again
    expired = cluster.token("apps", "web", lifetime=-120)
    with pytest.raises(AuthenticationFailed, match="TOKEN_EXPIRED"):
        await authenticator.authenticate_screened(expired, screen_claiming(keys))
    token = _bound_token(cluster)
    assert (await authenticator.authenticate_screened(token, screen_claiming(keys))).principal == "apps/web"
