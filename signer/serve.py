"""``meshsigner serve``: the one place that builds every piece and connects them.

Lifecycle lives beside it: signer/task_supervisor.py keeps the long-running tasks running, signer/readiness.py
says whether the server can issue, signer/serving_tls.py obtains and renews the listener's certificate,
signer/worker_processes.py runs ``--workers``, signer/process_signals.py turns SIGINT/SIGTERM into a clean stop.
The in-cluster pieces are built by signer/serve_in_cluster.py, imported only when the configuration needs the
Kubernetes API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from loguru import logger
from prometheus_client import CollectorRegistry

from bridge.errors import BackendUnavailable
from bridge.local_ca import LocalCA
from bridge.signing import SigningBackend
from clocks import Clock, SystemClock
from policies import IdentityDecider, OwnIdentityOnly
from signer.auth.base import Authenticator
from signer.auth.client_cert import ClientCertAuthenticator
from signer.auth.jwks import JwksAuthenticator
from signer.auth.prescreen import PrescreenMetrics, TokenPrescreen
from signer.auth.refusal_limit import PeerLimitMetrics, PeerRefusalLimiter
from signer.auth.screened import ScreenedAuthenticator
from signer.client_cert_front import ClientCertFront
from signer.decided_request import DecisionRecorder
from signer.decision_log import DecisionLog
from signer.errors import StartupError, TemporarilyUnavailable
from signer.grpc_server import build_server, set_serving
from signer.logs import configure_logging, logs_info
from signer.metrics import ServerMetrics
from signer.probes import ProbeServer
from signer.process_signals import ShutdownHooks, stop_on_signals
from signer.readiness import Readiness, ReadinessCheck
from signer.service import (
    CertificateService,
    ClientCertAuthentication,
    NodeAuthorizer,
    ServiceConfig,
)
from signer.serving_tls import ServingCertificate
from signer.settings import TLS_CIPHER_SUITES, ServeSettings
from signer.task_supervisor import TaskSupervisor
from signer.worker_processes import (
    WorkerProcesses,
    metrics_exposition,
    per_process_settings,
    shared_metrics_directory,
)

if TYPE_CHECKING:  # the in-cluster parts load the Kubernetes client: imported only when configured
    from bridge.kube import KubeClient
    from bridge.leader_election import LeaderElector
    from bridge.namespace_labels import NamespaceLabelCache
    from bridge.pods import PodCache
    from bridge.policy_objects import PolicyObjectWatch
    from policies.policy_store import PolicyStore  # the YAML engine: imported only with policies configured
    from signer.serve_in_cluster import AuditMirrorParts, CertManagerParts, InClusterAuth, KubernetesCsrParts

EXIT_CANNOT_START = 2
PolicyStatusController = Callable[[asyncio.Event], Awaitable[None]]
# Errors that stop a long-running task because a backend is down (logged without a traceback, then restarted).
OUTAGES: tuple[type[Exception], ...] = (BackendUnavailable, TemporarilyUnavailable)


def needs_kube(settings: ServeSettings) -> bool:
    """Whether any part of the configuration talks to the Kubernetes API."""
    policy_labels = bool(settings.policy_dir and settings.kubeconfig)  # label selectors, outside the cluster too
    policy_objects = settings.policy_source == "kubernetes"
    node_pods = bool(settings.ca_trusted_node_accounts and settings.kubeconfig)  # node authorization, likewise
    cluster_keys = settings.authenticator == "jwks" and not settings.jwks_file  # OIDC discovery and informers
    duties = bool(settings.cluster_duties and settings.kubeconfig)  # root ConfigMaps, istiod's certificate
    return (
        settings.signer in ("cert-manager", "kubernetes-csr")
        or settings.authenticator == "tokenreview"
        or cluster_keys
        or settings.mirror_certificate_signing_requests
        or policy_labels
        or policy_objects
        or node_pods
        or duties
    )


def build_leader_election(
    settings: ServeSettings,
    kube: KubeClient | None,
    registry: CollectorRegistry,
    clock: Clock,
    backend: SigningBackend,
    parts: CertManagerParts | KubernetesCsrParts | None,
    policy_status: PolicyStatusController | None = None,
) -> LeaderElector | None:
    """The Lease campaign and the cluster controllers (only with Kubernetes access, only in the first of the
    --workers processes: the others run with --cluster-duties=false); ``policy_status`` writes the policy objects'
    status while leading."""
    if kube is None or not settings.cluster_duties:
        return None
    from signer.serve_in_cluster import build_cluster_duties

    issuers = None
    signing: SigningBackend  # istiod's certificate, if meshsigner signs it: unwrapped, as it is no workload's
    if isinstance(backend, LocalCA):
        roots_pem, signing = backend.roots_pem, backend
        roots = lambda: roots_pem  # noqa: E731  # the local CA's roots do not change while it runs
    elif parts is not None:
        bundle, issuers, signing = parts.roots, parts.issuers, parts.backend
        roots = lambda: bundle.pem  # noqa: E731  # read at each check: the pinned file is watched
    else:
        return None
    return build_cluster_duties(
        settings,
        kube,
        registry,
        clock,
        roots=roots,
        issuers=issuers,
        signing=signing,
        policy_status=policy_status,
    )


def build_backend(
    settings: ServeSettings, kube: KubeClient | None, registry: CollectorRegistry, local_ca: LocalCA | None = None
) -> tuple[SigningBackend, CertManagerParts | KubernetesCsrParts | None]:
    """``local_ca``: the CA ``serve`` already opened (before the workers start), not read a second time."""
    if settings.signer == "local":
        if local_ca is not None:
            return local_ca, None
        try:
            return LocalCA.open(settings.local_ca_dir, key_type=settings.local_ca_key_type), None
        except (OSError, ValueError) as exc:
            raise StartupError(f"--local-ca-dir: {exc}") from exc
    if settings.signer == "cert-manager":
        assert kube is not None
        from signer.serve_in_cluster import build_cert_manager

        parts = build_cert_manager(settings, kube, registry)
        return parts.backend, parts
    if settings.signer == "kubernetes-csr":
        assert kube is not None
        from signer.serve_in_cluster import build_kubernetes_csr

        csr_parts = build_kubernetes_csr(settings, kube, registry)
        return csr_parts.backend, csr_parts
    raise StartupError(f"--signer {settings.signer} is not available in this build")


def build_audit_mirror(
    settings: ServeSettings, kube: KubeClient | None, registry: CollectorRegistry
) -> AuditMirrorParts | None:
    """The audit mirror, on its own Kubernetes client, with --mirror-certificate-signing-requests."""
    if not settings.mirror_certificate_signing_requests:
        return None
    assert kube is not None
    from signer.serve_in_cluster import build_audit_mirror as build

    return build(settings, registry, kube.metrics)


def build_authenticator(
    settings: ServeSettings, kube: KubeClient | None, registry: CollectorRegistry, clock: Clock
) -> tuple[ScreenedAuthenticator, InClusterAuth | None]:
    """The configured authenticator behind the per-peer refusal limit and the offline pre-screen; with the API,
    also the in-cluster parts (the cluster's keys, the informers) whose tasks and checks ``run`` starts."""
    in_cluster = None
    inner: Authenticator
    if settings.authenticator == "jwks" and settings.jwks_file:
        jwks = JwksAuthenticator(
            settings.jwks_file, issuer=settings.token_issuer, audiences=settings.token_audiences, clock=clock
        )
        if not jwks.ready:
            raise StartupError(f"--jwks-file {settings.jwks_file}: no usable keys (see the log above)")
        inner = jwks
    elif settings.authenticator in ("tokenreview", "jwks"):
        assert kube is not None
        from signer.serve_in_cluster import build_in_cluster_auth

        in_cluster = build_in_cluster_auth(settings, kube, registry, clock)
        inner = in_cluster.authenticator
    else:
        raise StartupError(f"--authenticator {settings.authenticator} is not available in this build")
    prescreen = None
    if settings.token_prescreen:
        prescreen = TokenPrescreen(
            audiences=settings.token_audiences,
            clock=clock,
            metrics=PrescreenMetrics(registry),
            issuer=settings.token_issuer,
            keys=in_cluster.keys if in_cluster is not None else None,
        )
    limiter = None
    if settings.peer_auth_failure_burst > 0:
        limiter = PeerRefusalLimiter(
            rate=settings.peer_auth_failure_qps,
            burst=settings.peer_auth_failure_burst,
            clock=clock,
            metrics=PeerLimitMetrics(registry),
        )
    return ScreenedAuthenticator(inner, prescreen=prescreen, limiter=limiter), in_cluster


def apply_serving_tls_options(settings: ServeSettings) -> None:
    """What of istio-csr's --serving-tls-* gRPC Python can honour: it exposes no TLS version, cipher or curve
    options on server credentials, so the flags are validated (settings.py) and what cannot apply is logged."""
    if settings.enable_client_cert_authenticator:
        # the client-certificate front (client_cert_front.py) applies the version and the ciphers itself
        if settings.serving_tls_curve_preferences:
            logger.bind(event="serving_tls_option_ignored", option="serving-tls-curve-preferences").warning(
                "--serving-tls-curve-preferences is validated but not applied: Python's ssl module sets no curve list"
            )
        return
    if settings.serving_tls_cipher_suites:
        logger.bind(event="serving_tls_option_ignored", option="serving-tls-cipher-suites").warning(
            "--serving-tls-cipher-suites is validated but not applied: gRPC Python cannot set a listener's cipher "
            "list (the C core's process-wide GRPC_SSL_CIPHER_SUITES variable can: {})",
            ":".join(TLS_CIPHER_SUITES[name] for name in settings.serving_tls_cipher_suites),
        )
    if settings.serving_tls_min_version == "VersionTLS13":
        logger.bind(event="serving_tls_option_ignored", option="serving-tls-min-version").warning(
            "--serving-tls-min-version=VersionTLS13 cannot be enforced by gRPC Python; the listener accepts TLS 1.2 "
            "and 1.3 (never below 1.2)"
        )
    if settings.serving_tls_curve_preferences:
        logger.bind(event="serving_tls_option_ignored", option="serving-tls-curve-preferences").warning(
            "--serving-tls-curve-preferences is validated but not applied: gRPC Python uses its TLS library's defaults"
        )


def build_node_authorization(
    settings: ServeSettings, kube: KubeClient | None, pods: PodCache | None = None
) -> tuple[PodCache | None, NodeAuthorizer | None]:
    """The pod cache and node authorizer when node accounts are trusted (ztunnel impersonation) and the API is
    reachable; without the API every impersonation is PERMISSION_DENIED, which is said once at start."""
    if not settings.ca_trusted_node_accounts:
        return pods, None
    if kube is None:
        logger.bind(event="node_authorization_off").warning(
            "--ca-trusted-node-accounts is set ({}) but there is no Kubernetes access (use --authenticator=tokenreview "
            "or --kubeconfig): node authorization needs the pod list, so every impersonation (ztunnel) will be "
            "refused with PERMISSION_DENIED",
            ",".join(settings.ca_trusted_node_accounts),
        )
        return None, None
    from signer.serve_in_cluster import build_node_authorization as build

    return build(kube, pods)


def client_cert_roots(
    settings: ServeSettings, backend: SigningBackend, parts: CertManagerParts | KubernetesCsrParts | None
) -> Callable[[], Sequence[x509.Certificate]]:
    """The roots presented client certificates must chain to: the local CA's, or the pinned --root-ca-file
    (settings.py refuses the flag without one of them; the roots are read at each use, so rotation applies)."""
    if isinstance(backend, LocalCA):
        local = backend
        return lambda: local.roots
    if parts is not None and parts.roots.pinned:
        bundle = parts.roots
        return lambda: bundle.roots
    raise StartupError("--enable-client-cert-authenticator needs pinned roots (--root-ca-file, or --signer local)")


def uses_policy_store(settings: ServeSettings) -> bool:
    return bool(settings.policy_dir) or settings.policy_source == "kubernetes"


def build_decider(
    settings: ServeSettings, registry: CollectorRegistry, namespace_labels: NamespaceLabelCache | None
) -> tuple[IdentityDecider, PolicyStore | None]:
    """The policy store when --policy-dir is set or --policy-source is kubernetes (not ready, not fatal, while no
    valid set exists), returned twice (as the decider and as the store to feed); otherwise istio-csr's built-in rule
    and no store."""
    labels = namespace_labels.labels if namespace_labels is not None else None
    if settings.policy_source == "kubernetes":
        from policies.policy_store import PolicyStore

        objects_store = PolicyStore.for_objects(
            trust_domain=settings.trust_domain,
            root_namespace=settings.policy_root_namespace,
            registry=registry,
            namespace_labels=labels,
        )
        return objects_store, objects_store
    if settings.policy_dir:
        if not Path(settings.policy_dir).is_dir():
            raise StartupError(f"--policy-dir {settings.policy_dir}: not a directory")
        from policies.policy_store import PolicyStore  # the YAML engine loads only when it is used

        store = PolicyStore(
            settings.policy_dir,
            trust_domain=settings.trust_domain,
            registry=registry,
            namespace_labels=labels,
        )
        return store, store
    return OwnIdentityOnly(settings.trust_domain, int(settings.max_client_certificate_duration)), None


def build_policy_objects(
    settings: ServeSettings, kube: KubeClient | None, store: PolicyStore | None
) -> PolicyObjectWatch | None:
    """With --policy-source kubernetes: the policy objects' watch, feeding the store (every replica, not only
    the leader: each decides from its own copy)."""
    if settings.policy_source != "kubernetes":
        return None
    assert kube is not None and store is not None  # needs_kube and build_decider see to both
    from bridge.policy_objects import PolicyObjectWatch

    return PolicyObjectWatch(kube, store.objects_changed, label_selector=settings.policy_label_selector)


def build_policy_status(
    kube: KubeClient | None, objects: PolicyObjectWatch | None, store: PolicyStore | None, clock: Clock
) -> PolicyStatusController | None:
    """With --policy-source kubernetes: the leader-only writer of the policy objects' status."""
    if kube is None or objects is None or store is None:
        return None
    from bridge.policy_status import StatusWriter

    return StatusWriter(kube, objects, store.object_statuses, clock=clock).run


async def run(
    settings: ServeSettings,
    *,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    shutdown_hooks: ShutdownHooks | None = None,
    local_ca: LocalCA | None = None,
) -> int:
    """Build every piece, serve until ``stop``, then shut down in order. Raises StartupError when it cannot start.

    Shutdown order (SIGTERM): readiness 503 and gRPC health NOT_SERVING first; then the listener stops taking
    connections and calls (new ones get UNAVAILABLE, which Istio's agents retry, reaching another replica) while
    the calls already accepted finish, for at most --shutdown-grace-period (then they are cancelled); then the
    background tasks stop, ``shutdown_hooks`` run (leader election releases its Lease there), and the rest closes.
    """
    stop = stop or asyncio.Event()
    clock = clock or SystemClock()
    shutdown_hooks = shutdown_hooks or ShutdownHooks(clock)
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    kube = None
    outages = OUTAGES
    if needs_kube(settings):
        from signer.serve_in_cluster import KUBE_OUTAGES, build_kube

        kube = build_kube(settings, registry)
        outages += KUBE_OUTAGES
    tasks = TaskSupervisor(stop, clock=clock, registry=registry, outages=outages)
    probes: list[ProbeServer] = []
    front: ClientCertFront | None = None
    mirror = None
    try:
        backend, parts = build_backend(settings, kube, registry, local_ca)
        mirror = build_audit_mirror(settings, kube, registry)
        if mirror is not None:
            await mirror.preflight()
            backend = mirror.wrap(backend)
        authenticator, in_cluster_auth = build_authenticator(settings, kube, registry, clock)
        namespace_labels = None
        if kube is not None and uses_policy_store(settings):
            from signer.serve_in_cluster import build_namespace_labels

            namespace_labels = build_namespace_labels(kube)
        decider, policy_store = build_decider(settings, registry, namespace_labels)
        policy_objects = build_policy_objects(settings, kube, policy_store)
        pods, node_authorizer = build_node_authorization(
            settings, kube, in_cluster_auth.pods if in_cluster_auth is not None else None
        )
        apply_serving_tls_options(settings)
        decision_log = DecisionLog(
            settings.decision_log or None,
            to_log=logs_info(settings.log_level),
            dropped=metrics.decision_records_dropped,
        )
        record_decision: DecisionRecorder = decision_log
        if mirror is not None:
            record_decision = mirror.recorder(decision_log)
            for name, factory in mirror.tasks(stop).items():
                tasks.start(name, factory)
        serving = ServingCertificate(
            backend,
            dns_names=settings.serving_certificate_dns_names,
            duration_seconds=settings.serving_certificate_duration,
            key_algorithm=settings.serving_signature_algorithm,
            key_size=settings.serving_certificate_key_size,
            metrics=metrics,
            clock=clock,
        )
        checks: dict[str, ReadinessCheck] = {"backend": backend, "authenticator": authenticator, "policy": decider}
        if namespace_labels is not None:
            labels = namespace_labels
            tasks.start("namespace-labels", lambda: labels.watch.run(stop))
            if policy_store is not None and policy_store.needs_namespace_labels:
                checks["namespace_labels"] = namespace_labels
        if policy_objects is not None:
            for name, factory in policy_objects.tasks(stop).items():
                tasks.start(name, factory)
        if pods is not None:
            pod_cache = pods
            tasks.start("pod-watch", lambda: pod_cache.watch.run(stop))
            checks["pods"] = pods
        if in_cluster_auth is not None:
            checks.update(in_cluster_auth.checks())
            for name, factory in in_cluster_auth.tasks(stop).items():
                tasks.start(name, factory)
        if parts is not None:
            checks.update(parts.checks())
            await parts.preflight()
        policy_status = build_policy_status(kube, policy_objects, policy_store, clock)
        leader = build_leader_election(settings, kube, registry, clock, backend, parts, policy_status)
        if leader is not None:
            elector = leader
            tasks.start("leader-election", lambda: elector.run(stop))
            shutdown_hooks.add("release-lease", elector.release)  # also when start-up or serving fails
        checks["tasks"] = tasks
        readiness = Readiness({**checks, "serving_certificate": serving})
        # Probes first: while the issuer has not signed the serving certificate, /readyz says why.
        if settings.readiness_probe_port:
            probe = ProbeServer(readiness=readiness, readiness_path=settings.readiness_probe_path)
            await probe.start("0.0.0.0", settings.readiness_probe_port)
            probes.append(probe)
        if settings.metrics_port:
            metrics_server = ProbeServer(registry=metrics_exposition(registry))
            await metrics_server.start("0.0.0.0", settings.metrics_port)
            probes.append(metrics_server)
        if parts is not None:
            for name, factory in parts.tasks(stop).items():
                tasks.start(name, factory)
            if not await serving.obtain_until_issued(stop):
                await parts.backend.close()  # the deletes of the serving requests, before the client closes
                decision_log.close()
                return 0
        else:
            await serving.obtain()
        client_certs = None
        if settings.enable_client_cert_authenticator:
            roots = client_cert_roots(settings, backend, parts)
            front = ClientCertFront(
                material=lambda: serving.material,
                roots=roots,
                minimum_tls13=settings.serving_tls_min_version == "VersionTLS13",
                tls12_ciphers=[TLS_CIPHER_SUITES[name] for name in settings.serving_tls_cipher_suites],
            )
            client_certs = ClientCertAuthentication(
                ClientCertAuthenticator(roots, trust_domain=settings.trust_domain, clock=clock), front
            )
        service = CertificateService(
            ServiceConfig(
                trust_domain=settings.trust_domain,
                cluster_id=settings.cluster_id,
                trusted_node_accounts=frozenset(settings.ca_trusted_node_accounts),
                request_timeout_seconds=settings.request_timeout,
                max_in_flight=settings.max_in_flight,
                backend_name=settings.signer,
            ),
            authenticator=authenticator,
            decider=decider,
            backend=backend,
            metrics=metrics,
            record_decision=record_decision,
            node_authorizer=node_authorizer,
            client_certs=client_certs,
            clock=clock,
        )
        if front is None:
            server, health_servicer, port = build_server(service, serving.credentials(), settings.serving_address)
            await server.start()
        else:  # the front terminates TLS and pipes to gRPC on a private unix socket (client_cert_front.py)
            local = grpc.local_server_credentials(grpc.LocalConnectionType.UDS)
            server, health_servicer, _ = build_server(service, local, front.grpc_address)
            await server.start()
            port = await front.start(settings.serving_address)
        readiness.listening = True
        await set_serving(health_servicer, True)
        tasks.start("serving-certificate-renewal", lambda: serving.renew_forever(stop))
        if isinstance(authenticator.inner, JwksAuthenticator):
            jwks = authenticator.inner
            tasks.start("jwks-watch", lambda: jwks.watch(stop))
        if policy_store is not None and policy_objects is None:
            store = policy_store
            tasks.start("policy-watch", lambda: store.watch(stop))
        logger.bind(event="started", port=port, signer=settings.signer, authenticator=settings.authenticator).info(
            "meshsigner serving on {} (trust domain {})", settings.serving_address, settings.trust_domain
        )
        try:
            await stop.wait()
        finally:
            readiness.stopping = True
            await set_serving(health_servicer, False)
            logger.bind(event="shutdown_not_ready").info(
                "shutting down: readiness and health say not serving; draining calls for up to {}s",
                settings.shutdown_grace_period,
            )
            # new calls get UNAVAILABLE while those accepted finish (draining.py); then the listener closes
            started = clock.monotonic()
            if not await service.calls.close(settings.shutdown_grace_period):
                logger.bind(event="shutdown_grace_exceeded", calls=service.calls.active).warning(
                    "{} calls still in flight after the grace period: cancelling them", service.calls.active
                )
            if front is not None:
                await front.stop_accepting()
            await server.stop(max(0.0, settings.shutdown_grace_period - (clock.monotonic() - started)))
            readiness.listening = False
            logger.bind(event="shutdown_drained").info("gRPC listener closed; accepted calls finished")
            if front is not None:
                await front.close()
            if leader is not None:
                await leader.release()  # a standby leads at its next retry, not after the lease duration
            if parts is not None:
                await parts.backend.close()  # the deletes of the last requests
            await asyncio.to_thread(decision_log.close)  # writes what is still queued
    finally:
        stop.set()
        await tasks.close()
        await shutdown_hooks.run()
        if front is not None:
            await front.close()  # when start-up failed after it was built (closing twice is harmless)
        for probe in probes:
            await probe.close()
        if kube is not None:
            kube.close()
        if mirror is not None:
            mirror.close()
        logger.bind(event="stopped").info("meshsigner stopped")
    return 0


def serve(settings: ServeSettings) -> int:
    """The ``meshsigner serve`` process: logging, the local CA, the ``--workers`` processes, signals, then ``run``."""
    configure_logging(settings.log_level, settings.log_format)
    with shared_metrics_directory(settings):
        workers = WorkerProcesses(settings)
        local_ca = None
        try:
            if settings.signer == "local":  # create the CA once, before any worker could race to create it
                local_ca = LocalCA.open(settings.local_ca_dir, key_type=settings.local_ca_key_type)
            workers.start()
        except (OSError, ValueError) as exc:
            logger.error("cannot start: {}", exc)
            workers.stop()
            return EXIT_CANNOT_START
        try:
            serving = _serve_until_signalled(per_process_settings(settings), workers, local_ca)
            return run_event_loop(serving, _event_loop_for(settings))
        except StartupError as exc:
            logger.error("cannot start: {}", exc)
            return EXIT_CANNOT_START
        finally:
            workers.stop()


def _event_loop_for(settings: ServeSettings) -> str:
    """The loop to run on: the client-certificate front needs asyncio's own (under uvloop, start_tls on a connection
    paused in connection_made lost the ClientHello now and then and the handshake hung: measured, not assumed)."""
    if settings.enable_client_cert_authenticator and settings.event_loop != "asyncio":
        logger.bind(event="event_loop", chosen="asyncio").info(
            "--enable-client-cert-authenticator runs on asyncio's event loop, not {}", settings.event_loop
        )
        return "asyncio"
    return settings.event_loop


def run_event_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Runs ``main`` to completion on the chosen event loop (``--event-loop``)."""
    if event_loop == "uvloop":
        import uvloop  # only this mode loads it

        return uvloop.run(main)
    return asyncio.run(main)


async def _serve_until_signalled(settings: ServeSettings, workers: WorkerProcesses, local_ca: LocalCA | None) -> int:
    stop = asyncio.Event()
    # the workers drain at the same time as this process, not after it
    stop_on_signals(stop, also=workers.terminate)
    clock = SystemClock()
    return await run(settings, stop=stop, clock=clock, shutdown_hooks=ShutdownHooks(clock), local_ca=local_ca)
