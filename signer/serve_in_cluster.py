"""The in-cluster half of ``serve``'s wiring (``signer/serve.py`` calls these builders): the Kubernetes client, the
cert-manager and Kubernetes CSR backends and what runs beside them, the audit mirror, TokenReview, the
namespace-label and pod caches. Imported only when
the configuration needs the API, so that a local-CA start never loads the Kubernetes client library (about a third
of the start-up time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry

from bridge.audit_mirror import AuditMirror, MirrorOptions, SigningActivityBackend
from bridge.cert_manager import CertManagerBackend, CertManagerOptions, certificate_request_wait
from bridge.certificate_request_watch import CertificateRequestWatch, RequestWatch
from bridge.cleanup import LeftoverSweeper
from bridge.cluster_trust_bundle import ClusterTrustBundlePublisher
from bridge.controllers import Controller, ControllerMetrics, run_controllers
from bridge.issuer_check import IssuerCheck, IssuerState
from bridge.istiod_certificate import IstiodCertOptions, certificate_keeper, secret_keeper
from bridge.kube import (
    CERTIFICATE_SIGNING_REQUESTS,
    KubeClient,
    KubeError,
    KubeMetrics,
    KubeOptions,
    KubeUnavailable,
)
from bridge.kubernetes_csr import (
    MIN_EXPIRATION_SECONDS,
    REQUEST_SELECTOR,
    KubernetesCsrBackend,
    KubernetesCsrOptions,
    Permission,
    csr_watch,
    missing_permissions,
    needed_permissions,
    signer_field_selector,
)
from bridge.leader_election import LeaderElector, LeaseTimings
from bridge.metrics import BridgeMetrics
from bridge.namespace_labels import NamespaceLabelCache
from bridge.pods import PodCache
from bridge.root_bundle import RootBundle
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from bridge.service_accounts import ServiceAccountCache
from bridge.signing import SigningBackend
from bridge.trust_distribution import TrustDistributor
from clocks import Clock
from signer.audit_trail import MirroringRecorder
from signer.auth.base import Authenticator
from signer.auth.cluster_jwks import ClusterJwksAuthenticator
from signer.auth.cluster_keys import ClusterIssuerKeys, KeyRefreshMetrics
from signer.auth.node_authorizer import PodNodeAuthorizer
from signer.auth.tokenreview import TokenReviewAuthenticator
from signer.decided_request import DecisionRecorder
from signer.errors import StartupError
from signer.metrics import AuthMetrics
from signer.readiness import ReadinessCheck
from signer.settings import ServeSettings
from signer.task_supervisor import TaskFactory

# A long-running task stopped by one of these met an API outage, not a bug: logged without a traceback.
KUBE_OUTAGES: tuple[type[Exception], ...] = (KubeUnavailable,)


MIRROR_API_SHARE = 0.2  # the audit mirror's own client: a fifth of --kube-api-qps/-burst, on top of the workload's
# (always rate-limited, even with --disable-kubernetes-client-rate-limiter)
MIRROR_THREADS = 4


def build_kube(
    settings: ServeSettings, registry: CollectorRegistry, *, metrics: KubeMetrics | None = None, share: float = 1.0
) -> KubeClient:
    """The one Kubernetes client of the workload path (``share`` < 1 with ``metrics``: the audit mirror's own)."""
    options = KubeOptions(
        kubeconfig=settings.kubeconfig,
        qps=max(1.0, settings.kube_api_qps * share),
        burst=max(1, int(settings.kube_api_burst * share)),
        # the mirror's share is always enforced: it is what keeps mirror writes from crowding the workload path
        rate_limiter=share < 1.0 or not settings.disable_kubernetes_client_rate_limiter,
        token_review_share=settings.kube_api_token_review_share,
        threads=MIRROR_THREADS if share < 1.0 else KubeOptions.threads,
    )
    try:
        return KubeClient(options, metrics or KubeMetrics(registry))
    except KubeError as exc:
        raise StartupError(f"Kubernetes client: {exc.message}") from None


def open_roots(root_ca_file: str | None, metrics: BridgeMetrics) -> RootBundle:
    """The root bundle (pinned by --root-ca-file when given); an unreadable file stops the start."""
    try:
        return RootBundle(root_ca_file, metrics)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def sweeper_unless_preserved(
    preserve_flag: str, what: str, preserve: bool, sweeper: Callable[[], LeftoverSweeper]
) -> LeftoverSweeper | None:
    """The leftover sweep, or none (said once, as a warning) when the requests are kept for debugging."""
    if not preserve:
        return sweeper()
    logger.bind(event="preserving_requests").warning(
        "--{}: {} are kept (debugging only); the leftover sweep is off", preserve_flag, what
    )
    return None


async def require_permissions(kube: KubeClient, needed: list[Permission], needed_for: str) -> None:
    """SelfSubjectAccessReviews: refuse to start, naming each missing permission and the RBAC rule that grants
    it, rather than fail every request (``needed_for``: the flags that need them)."""
    try:
        missing = await missing_permissions(kube, needed)
    except KubeError as exc:
        raise StartupError(f"{needed_for}: cannot check permissions: {exc}") from None
    if missing:
        raise StartupError(f"{needed_for}: " + "; ".join(missing))


def backend_tasks(
    stop: asyncio.Event, watch_name: str, watch: RequestWatch, roots: RootBundle, sweeper: LeftoverSweeper | None
) -> dict[str, TaskFactory]:
    """What runs beside either cluster backend: its request watch, the pinned roots' file watch, the leftover
    sweep. Each runs until ``stop`` (the supervisor restarts one that ends before)."""
    runners: dict[str, TaskFactory] = {watch_name: lambda: watch.run(stop)}
    if roots.pinned:
        runners["root-bundle-watch"] = lambda: roots.watch(stop)
    if sweeper is not None:
        runners["leftover-sweep"] = lambda: sweeper.run(stop)
    return runners


@dataclass
class CertManagerParts:
    """The cert-manager backend and what runs beside it (each a readiness check and/or a task)."""

    backend: CertManagerBackend
    issuers: IssuerSelector
    issuer_check: IssuerCheck
    watch: CertificateRequestWatch
    roots: RootBundle
    sweeper: LeftoverSweeper | None

    def checks(self) -> dict[str, ReadinessCheck]:
        return {
            "issuer_configured": self.issuers,
            "issuer": self.issuer_check,
            "certificate_request_watch": self.watch,
            "root_bundle": self.roots,
        }

    async def preflight(self) -> None:
        """An ACME issuer cannot put SPIFFE URIs in SANs: refuse to start rather than fail every request."""
        if await self.issuer_check.probe() is IssuerState.ACME:
            raise StartupError(f"issuer {self.issuers.current}: {self.issuer_check.reason}")

    def tasks(self, stop: asyncio.Event) -> dict[str, TaskFactory]:
        runners = backend_tasks(stop, "certificate-request-watch", self.watch, self.roots, self.sweeper)
        runners["issuer-check"] = lambda: self.issuer_check.run(stop)
        if self.issuers.watching:
            runners["runtime-issuer-watch"] = lambda: self.issuers.run(stop)
        return runners


def build_cert_manager(settings: ServeSettings, kube: KubeClient, registry: CollectorRegistry) -> CertManagerParts:
    static = settings.static_issuer
    issuers = IssuerSelector(
        IssuerRef(*static) if static else None,
        kube=kube,
        config_map_namespace=settings.runtime_issuance_config_map_namespace,
        config_map_name=settings.runtime_issuance_config_map_name,
    )
    namespace = settings.certificate_namespace
    metrics = BridgeMetrics(registry)
    roots = open_roots(settings.root_ca_file or None, metrics)
    if not roots.pinned:
        logger.bind(event="roots_not_pinned").warning(
            "NO --root-ca-file: the mesh root bundle will be whatever the issuer reports in status.ca (trust on "
            "first use). Anyone able to change the issuer or write CertificateRequest status can make this "
            "server distribute their CA (signer hijacking). Pin the roots with --root-ca-file in production."
        )
    wait = certificate_request_wait(settings.certificate_request_timeout, settings.request_timeout)
    if wait < settings.certificate_request_timeout:
        logger.bind(event="certificate_request_timeout_clamped").info(
            "workload CertificateRequests wait at most {:.1f}s (90% of --request-timeout={:.0f}s), not the "
            "--certificate-request-timeout={:.0f}s, so that their own timeout answers before the RPC's",
            wait,
            settings.request_timeout,
            settings.certificate_request_timeout,
        )
    watch = CertificateRequestWatch(kube, namespace)
    issuer_check = IssuerCheck(kube, issuers, namespace, registry)
    backend = CertManagerBackend(
        kube,
        CertManagerOptions(
            namespace=namespace,
            annotations=settings.certificate_request_additional_annotations,
            preserve=settings.preserve_certificate_requests,
            approve=settings.approve_certificate_requests,
            timeout_seconds=settings.certificate_request_timeout,
            request_timeout_seconds=settings.request_timeout,
        ),
        issuers=issuers,
        issuer_check=issuer_check,
        watch=watch,
        roots=roots,
        metrics=metrics,
    )
    sweeper = sweeper_unless_preserved(
        "preserve-certificate-requests",
        "CertificateRequests",
        settings.preserve_certificate_requests,
        lambda: LeftoverSweeper(
            kube, namespace, request_timeout_seconds=settings.certificate_request_timeout, registry=registry
        ),
    )
    return CertManagerParts(backend, issuers, issuer_check, watch, roots, sweeper)


@dataclass
class InClusterAuth:
    """The authenticator that needs the API (TokenReview, or the cluster's JWKS with the informers it checks
    bindings against) and what runs beside it. The cluster's issuer and keys are read in both modes: the
    pre-screen uses them before any TokenReview."""

    authenticator: Authenticator
    keys: ClusterIssuerKeys
    service_accounts: ServiceAccountCache | None = None
    pods: PodCache | None = None

    def checks(self) -> dict[str, ReadinessCheck]:
        found: dict[str, ReadinessCheck] = {}
        if self.service_accounts is not None:
            found["service_accounts"] = self.service_accounts
        return found

    def tasks(self, stop: asyncio.Event) -> dict[str, TaskFactory]:
        runners: dict[str, TaskFactory] = {"cluster-jwks": lambda: self.keys.run(stop)}
        if self.service_accounts is not None:
            service_accounts = self.service_accounts
            runners["service-account-watch"] = lambda: service_accounts.watch.run(stop)
        return runners


def build_in_cluster_auth(
    settings: ServeSettings, kube: KubeClient, registry: CollectorRegistry, clock: Clock
) -> InClusterAuth:
    keys = ClusterIssuerKeys(
        kube,
        clock=clock,
        metrics=KeyRefreshMetrics(registry),
        configured_issuer=settings.token_issuer,
        refresh_interval=settings.jwks_refresh_interval,
        min_refresh_interval=settings.jwks_min_refresh_interval,
    )
    if settings.authenticator == "tokenreview":
        return InClusterAuth(build_token_review(settings, kube, registry, clock), keys)
    service_accounts, pods = ServiceAccountCache(kube), PodCache(kube)
    authenticator = ClusterJwksAuthenticator(
        keys, service_accounts=service_accounts, pods=pods, audiences=settings.token_audiences, clock=clock
    )
    return InClusterAuth(authenticator, keys, service_accounts, pods)


@dataclass
class KubernetesCsrParts:
    """The Kubernetes CSR API backend and what runs beside it."""

    backend: KubernetesCsrBackend
    watch: RequestWatch
    roots: RootBundle
    sweeper: LeftoverSweeper | None
    kube: KubeClient
    needed: list[Permission]  # on CertificateSigningRequests of --signer-name
    signer_name: str
    issuers: None = None  # no cert-manager issuer in this mode

    def checks(self) -> dict[str, ReadinessCheck]:
        return {"certificate_signing_request_watch": self.watch, "root_bundle": self.roots}

    async def preflight(self) -> None:
        await require_permissions(self.kube, self.needed, f"--signer kubernetes-csr --signer-name {self.signer_name}")

    def tasks(self, stop: asyncio.Event) -> dict[str, TaskFactory]:
        # --root-ca-file is required in this mode (settings.py), so the roots are always pinned and watched
        return backend_tasks(stop, "certificate-signing-request-watch", self.watch, self.roots, self.sweeper)


def build_kubernetes_csr(settings: ServeSettings, kube: KubeClient, registry: CollectorRegistry) -> KubernetesCsrParts:
    metrics = BridgeMetrics(registry)
    roots = open_roots(settings.root_ca_file, metrics)
    watch = csr_watch(kube, settings.signer_name)
    backend = KubernetesCsrBackend(
        kube,
        KubernetesCsrOptions(
            signer_name=settings.signer_name,
            approve=settings.approve_certificate_signing_requests,
            preserve=settings.preserve_certificate_signing_requests,
            timeout_seconds=settings.certificate_request_timeout,
            request_timeout_seconds=settings.request_timeout,
        ),
        watch=watch,
        roots=roots,
        metrics=metrics,
    )
    sweeper = sweeper_unless_preserved(
        "preserve-certificate-signing-requests",
        "CertificateSigningRequests",
        settings.preserve_certificate_signing_requests,
        lambda: LeftoverSweeper(
            kube,
            None,
            request_timeout_seconds=settings.certificate_request_timeout,
            registry=registry,
            resource=CERTIFICATE_SIGNING_REQUESTS,
            label_selector=REQUEST_SELECTOR,
            field_selector=signer_field_selector(settings.signer_name),
            what="CertificateSigningRequests",
            metric="meshsigner_certificate_signing_requests_swept_total",
        ),
    )
    needed = needed_permissions(
        settings.signer_name,
        approve=settings.approve_certificate_signing_requests,
        delete=not settings.preserve_certificate_signing_requests,
    )
    return KubernetesCsrParts(backend, watch, roots, sweeper, kube, needed, settings.signer_name)


@dataclass
class AuditMirrorParts:
    """The audit mirror on its own Kubernetes client (own pool and token bucket), its writers and retention sweep."""

    mirror: AuditMirror
    kube: KubeClient

    async def preflight(self) -> None:
        signer_name = self.mirror.signer_name
        await require_permissions(
            self.kube,
            needed_permissions(signer_name, approve=True, delete=True, sign=True),
            f"--mirror-certificate-signing-requests --mirror-signer-name {signer_name}",
        )

    def wrap(self, backend: SigningBackend) -> SigningBackend:
        """The backend, telling the mirror when workload requests are being signed (it writes between them)."""
        return SigningActivityBackend(backend, self.mirror)

    def recorder(self, inner: DecisionRecorder) -> DecisionRecorder:
        """The decision recorder that also mirrors every decision."""
        return MirroringRecorder(inner, self.mirror)

    def tasks(self, stop: asyncio.Event) -> dict[str, TaskFactory]:
        sweeper = self.mirror.sweeper
        return {"audit-mirror": lambda: self.mirror.run(stop), "audit-mirror-retention": lambda: sweeper.run(stop)}

    def close(self) -> None:
        self.kube.close()


def build_audit_mirror(settings: ServeSettings, registry: CollectorRegistry, metrics: KubeMetrics) -> AuditMirrorParts:
    kube = build_kube(settings, registry, metrics=metrics, share=MIRROR_API_SHARE)
    mirror = AuditMirror(
        kube,
        MirrorOptions(signer_name=settings.mirror_signer_name, retention_seconds=settings.mirror_retention),
        registry=registry,
    )
    return AuditMirrorParts(mirror, kube)


def build_token_review(
    settings: ServeSettings, kube: KubeClient, registry: CollectorRegistry, clock: Clock
) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(
        kube,
        audiences=settings.token_audiences,
        metrics=AuthMetrics(registry),
        cache_seconds=settings.token_review_cache_duration,
        negative_cache_seconds=settings.token_review_negative_cache_duration,
        clock=clock,
    )


def build_namespace_labels(kube: KubeClient) -> NamespaceLabelCache:
    return NamespaceLabelCache(kube)


def build_node_authorization(kube: KubeClient, pods: PodCache | None = None) -> tuple[PodCache, PodNodeAuthorizer]:
    """The cluster-wide pod cache (its ``watch`` is a task, itself a readiness check; ``pods`` when one exists
    already) and the authorizer over it."""
    pods = pods or PodCache(kube)
    return pods, PodNodeAuthorizer(pods)


def build_cluster_duties(
    settings: ServeSettings,
    kube: KubeClient,
    registry: CollectorRegistry,
    clock: Clock,
    *,
    roots: Callable[[], str],
    issuers: IssuerSelector | None,
    signing: SigningBackend | None = None,
    policy_status: Controller | None = None,
) -> LeaderElector:
    """The leader election and the controllers it runs while this process leads: the root ConfigMaps, the
    ClusterTrustBundle (when named) and istiod's certificate (when enabled)."""
    metrics = ControllerMetrics(registry)
    controllers: dict[str, Controller] = {
        "root-configmaps": TrustDistributor(
            kube,
            roots,
            namespace_selector=settings.configmap_namespace_selector,
            workers=settings.max_concurrent_reconciles,
            metrics=metrics,
            clock=clock,
        ).run
    }
    if settings.cluster_trust_bundle_name:
        bundle = ClusterTrustBundlePublisher(
            kube, settings.cluster_trust_bundle_name, roots, metrics=metrics, clock=clock
        )
        controllers["cluster-trust-bundle"] = bundle.run
    if settings.istiod_cert_enabled:
        controllers["istiod-certificate"] = _istiod_certificate(
            settings, kube, metrics, clock, issuers, roots=roots, signing=signing
        )
    if policy_status is not None:  # --policy-source kubernetes: the policy objects' status (bridge/policy_status.py)
        controllers["policy-status"] = policy_status
    names = ", ".join(controllers)
    logger.bind(event="cluster_duties", controllers=names).info(
        "cluster controllers ({}) run while this process holds Lease {}/{}",
        names,
        settings.leader_election_namespace,
        settings.leader_election_name,
    )

    async def lead(stop: asyncio.Event) -> None:
        await run_controllers(controllers, stop, clock)

    return LeaderElector(
        kube,
        namespace=settings.leader_election_namespace,
        name=settings.leader_election_name,
        lead=lead,
        metrics=metrics,
        clock=clock,
        timings=LeaseTimings(
            settings.leader_election_lease_duration,
            settings.leader_election_renew_deadline,
            settings.leader_election_retry_period,
        ),
    )


def _istiod_certificate(
    settings: ServeSettings,
    kube: KubeClient,
    metrics: ControllerMetrics,
    clock: Clock,
    issuers: IssuerSelector | None,
    *,
    roots: Callable[[], str],
    signing: SigningBackend | None,
) -> Controller:
    """cert-manager (``issuers``): a Certificate for istiod-tls that follows the active issuer; the local CA or the
    Kubernetes CSR API (``signing``, the unwrapped backend): the istiod-tls Secret itself, its ``ca.crt`` being
    ``roots()``."""
    size = settings.istiod_cert_key_size or (2048 if settings.istiod_cert_key_algorithm == "RSA" else 256)
    options = IstiodCertOptions(
        name=settings.istiod_cert_name,
        namespace=settings.istiod_cert_namespace,
        trust_domain=settings.trust_domain,
        duration_seconds=settings.istiod_cert_duration,
        renew_before_seconds=settings.istiod_cert_renew_before,
        key_algorithm=settings.istiod_cert_key_algorithm,
        key_size=size,
        additional_dns_names=settings.istiod_cert_additional_dns_names,
        annotations=settings.istiod_cert_additional_annotations,
        revisions=settings.istiod_cert_istio_revisions,
    )
    if issuers is not None:
        return certificate_keeper(kube, options, issuers, metrics=metrics, clock=clock).run
    if signing is None:
        raise StartupError(f"--istiod-cert-enabled is not available with --signer {settings.signer}")
    if settings.signer == "kubernetes-csr" and options.duration_seconds < MIN_EXPIRATION_SECONDS:
        # the CSR API refuses shorter lifetimes and meshsigner never asks for longer than configured
        raise StartupError(
            f"--istiod-cert-duration {options.duration_seconds:g}s is under the Kubernetes CSR API's minimum of "
            f"{MIN_EXPIRATION_SECONDS}s (--signer kubernetes-csr)"
        )
    return secret_keeper(kube, signing, roots, options, metrics=metrics, clock=clock)
