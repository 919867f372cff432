"""``meshsigner serve``: the one place that builds every piece, starts the tasks and owns the shutdown order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from prometheus_client import CollectorRegistry

from bridge.local_ca import LocalCA
from bridge.signing import SigningBackend
from policies import IdentityDecider, OwnIdentityOnly, PolicyStore
from signer.auth.base import Authenticator
from signer.auth.jwks import JwksAuthenticator
from signer.decision_log import DecisionLog
from signer.errors import StartupError
from signer.grpc_server import build_server, set_serving
from signer.logs import configure_logging, logs_info
from signer.metrics import ServerMetrics
from signer.probes import ProbeServer
from signer.service import CertificateService, NodeAuthorizer, ServiceConfig
from signer.serving_tls import ServingCertificate
from signer.settings import TLS_CIPHER_SUITES, Settings

if TYPE_CHECKING:  # the in-cluster parts load the Kubernetes client: imported only when configured
    from bridge.kube import KubeClient
    from bridge.namespace_labels import NamespaceLabelCache
    from bridge.pods import PodCache
    from signer.cluster_parts import CertManagerParts

SHUTDOWN_GRACE_SECONDS = 5.0
EXIT_TASK_FAILED = 1


def supervise(task: asyncio.Task[None], stop: asyncio.Event, failures: list[str]) -> asyncio.Task[None]:
    """A long-lived task (a watch, a reload loop) runs until ``stop``. If it raises, or returns before ``stop`` is
    set, the caches or files it keeps current go stale without a word: log it, record it in ``failures`` and set
    ``stop``, so the process exits non-zero (and is restarted) rather than serving stale state."""

    def done(finished: asyncio.Task[None]) -> None:
        if finished.cancelled():
            return
        error = finished.exception()
        if error is None and stop.is_set():
            return
        failures.append(finished.get_name())
        bound = logger.bind(event="task_failed", task=finished.get_name())
        if error is not None:
            bound.opt(exception=error).error("{} failed; stopping the process", finished.get_name())
        else:
            bound.error("{} ended unexpectedly; stopping the process", finished.get_name())
        stop.set()

    task.add_done_callback(done)
    return task


def needs_kube(settings: Settings) -> bool:
    """Whether any part of the configuration talks to the Kubernetes API."""
    policy_labels = bool(settings.policy_dir and settings.kubeconfig)  # label selectors, outside the cluster too
    node_pods = bool(settings.ca_trusted_node_accounts and settings.kubeconfig)  # node authorization, likewise
    return settings.signer == "cert-manager" or settings.authenticator == "tokenreview" or policy_labels or node_pods


def build_backend(
    settings: Settings, kube: KubeClient | None, registry: CollectorRegistry
) -> tuple[SigningBackend, CertManagerParts | None]:
    if settings.signer == "local":
        try:
            return LocalCA.open(settings.local_ca_dir, key_type=settings.local_ca_key_type), None
        except (OSError, ValueError) as exc:
            raise StartupError(f"--local-ca-dir: {exc}") from exc
    if settings.signer == "cert-manager":
        assert kube is not None
        from signer.cluster_parts import build_cert_manager

        parts = build_cert_manager(settings, kube, registry)
        return parts.backend, parts
    raise StartupError(f"--signer {settings.signer} is not available in this build yet; use local or cert-manager")


def build_authenticator(settings: Settings, kube: KubeClient | None, registry: CollectorRegistry) -> Authenticator:
    if settings.authenticator == "jwks":
        authenticator = JwksAuthenticator(
            settings.jwks_file, issuer=settings.token_issuer, audiences=settings.token_audiences
        )
        if not authenticator.ready:
            raise StartupError(f"--jwks-file {settings.jwks_file}: no usable keys (see the log above)")
        return authenticator
    if settings.authenticator == "tokenreview":
        assert kube is not None
        from signer.cluster_parts import build_token_review

        return build_token_review(settings, kube, registry)
    raise StartupError(f"--authenticator {settings.authenticator} is not available in this build")


def apply_serving_tls_options(settings: Settings) -> None:
    """What of istio-csr's --serving-tls-* gRPC Python can honour: it exposes no TLS version, cipher or curve
    options on server credentials, so the flags are validated (settings.py) and what cannot apply is logged."""
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


async def obtain_serving_certificate(serving: ServingCertificate, stop: asyncio.Event) -> bool:
    """Retry until the issuer signs the serving certificate (or stop); False when stopped first."""
    delay = 0.2
    while not stop.is_set():
        try:
            await serving.obtain()
            return True
        except Exception as exc:  # any backend trouble (API down, issuer not ready): keep trying
            logger.bind(event="serving_certificate_pending").warning(
                "serving certificate not issued yet ({}); retrying in {:.1f}s", exc, delay
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 5.0)
    return False


def build_node_authorization(
    settings: Settings, kube: KubeClient | None
) -> tuple[PodCache | None, NodeAuthorizer | None]:
    """The pod cache and node authorizer when node accounts are trusted (ztunnel impersonation) and the API is
    reachable; without the API every impersonation is PERMISSION_DENIED, which is said once at start."""
    if not settings.ca_trusted_node_accounts:
        return None, None
    if kube is None:
        logger.bind(event="node_authorization_off").warning(
            "--ca-trusted-node-accounts is set ({}) but there is no Kubernetes access (use --authenticator=tokenreview "
            "or --kubeconfig): node authorization needs the pod list, so every impersonation (ztunnel) will be "
            "refused with PERMISSION_DENIED",
            ",".join(settings.ca_trusted_node_accounts),
        )
        return None, None
    from signer.cluster_parts import build_node_authorization as build

    return build(kube)


def build_decider(
    settings: Settings, registry: CollectorRegistry, namespace_labels: NamespaceLabelCache | None
) -> IdentityDecider:
    """The YAML policy store when --policy-dir is set (not ready, not fatal, while no valid set exists);
    otherwise istio-csr's built-in rule."""
    if settings.policy_dir:
        if not Path(settings.policy_dir).is_dir():
            raise StartupError(f"--policy-dir {settings.policy_dir}: not a directory")
        return PolicyStore(
            settings.policy_dir,
            trust_domain=settings.trust_domain,
            registry=registry,
            namespace_labels=namespace_labels.labels if namespace_labels is not None else None,
        )
    return OwnIdentityOnly(settings.trust_domain, int(settings.max_client_certificate_duration))


class Readiness:
    """Ready only when the server can actually issue (O8 of robustness.md)."""

    def __init__(self, **checks: object) -> None:
        self._checks = checks
        self.listening = False

    def __call__(self) -> list[str]:
        reasons = []
        for name, part in self._checks.items():
            if not getattr(part, "ready", False):
                detail = getattr(part, "reason", "")
                reasons.append(f"{name} not ready" + (f" ({detail})" if detail else ""))
        if not self.listening:
            reasons.append("not listening")
        return reasons


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    kube = None
    if needs_kube(settings):
        from signer.cluster_parts import build_kube

        kube = build_kube(settings, registry)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[str] = []  # long-lived tasks that ended before stop (see supervise)

    def start_task(coroutine: Coroutine[Any, Any, None], name: str) -> None:
        tasks.add(supervise(asyncio.create_task(coroutine, name=name), stop, failures))

    probes: list[ProbeServer] = []
    try:
        backend, parts = build_backend(settings, kube, registry)
        authenticator = build_authenticator(settings, kube, registry)
        namespace_labels = None
        if kube is not None and settings.policy_dir:
            from signer.cluster_parts import build_namespace_labels

            namespace_labels = build_namespace_labels(kube)
        decider = build_decider(settings, registry, namespace_labels)
        pods, node_authorizer = build_node_authorization(settings, kube)
        apply_serving_tls_options(settings)
        decision_log = DecisionLog(settings.decision_log or None, to_log=logs_info(settings.log_level))
        serving = ServingCertificate(
            backend,
            dns_names=settings.serving_certificate_dns_names,
            duration_seconds=settings.serving_certificate_duration,
            key_algorithm=settings.serving_signature_algorithm,
            key_size=settings.serving_certificate_key_size,
            metrics=metrics,
        )
        checks: dict[str, object] = {"backend": backend, "authenticator": authenticator, "policy": decider}
        if namespace_labels is not None:
            start_task(namespace_labels.watch.run(stop), "namespace-labels")
            if isinstance(decider, PolicyStore) and decider.needs_namespace_labels:
                checks["namespace_labels"] = namespace_labels
        if pods is not None:
            start_task(pods.watch.run(stop), "pod-watch")
            checks["pods"] = pods
        if parts is not None:
            checks.update(parts.checks())
            await parts.refuse_unusable_issuer()
        readiness = Readiness(**checks, serving_certificate=serving)
        # Probes first: while the issuer has not signed the serving certificate, /readyz says why.
        if settings.readiness_probe_port:
            probe = ProbeServer(readiness=readiness, readiness_path=settings.readiness_probe_path)
            await probe.start("0.0.0.0", settings.readiness_probe_port)
            probes.append(probe)
        if settings.metrics_port:
            metrics_server = ProbeServer(registry=registry)
            await metrics_server.start("0.0.0.0", settings.metrics_port)
            probes.append(metrics_server)
        if parts is not None:
            tasks.update(supervise(task, stop, failures) for task in parts.start(stop))
            if not await obtain_serving_certificate(serving, stop):
                return EXIT_TASK_FAILED if failures else 0
        else:
            await serving.obtain()
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
            record_decision=decision_log,
            node_authorizer=node_authorizer,
        )
        server, health_servicer, port = build_server(service, serving.credentials(), settings.serving_address)
        await server.start()
        readiness.listening = True
        await set_serving(health_servicer, True)
        start_task(serving.renew_forever(stop), "serving-certificate-renewal")
        if isinstance(authenticator, JwksAuthenticator):
            start_task(authenticator.watch(stop), "jwks-watch")
        if isinstance(decider, PolicyStore):
            start_task(decider.watch(stop), "policy-watch")
        logger.bind(event="started", port=port, signer=settings.signer, authenticator=settings.authenticator).info(
            "meshsigner serving on {} (trust domain {})", settings.serving_address, settings.trust_domain
        )
        try:
            await stop.wait()
        finally:
            readiness.listening = False
            await set_serving(health_servicer, False)
            await server.stop(SHUTDOWN_GRACE_SECONDS)
            if parts is not None:
                await parts.backend.close()  # the deletes of the last requests
            decision_log.close()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for probe in probes:
            await probe.close()
        if kube is not None:
            kube.close()
        logger.bind(event="stopped").info("meshsigner stopped")
    if failures:
        logger.bind(event="stopped_on_failure", tasks=failures).error(
            "exiting with status {}: {} ended unexpectedly", EXIT_TASK_FAILED, ", ".join(failures)
        )
        return EXIT_TASK_FAILED
    return 0


def per_process_settings(settings: Settings) -> Settings:
    """The settings one of ``--workers`` processes runs with. Each process has its own Kubernetes client and token
    bucket, so ``--kube-api-qps`` and ``--kube-api-burst`` (limits for the whole server) are
    divided among the processes: together they never exceed the configured rate."""
    if settings.workers <= 1:
        return settings
    return replace(
        settings,
        kube_api_qps=settings.kube_api_qps / settings.workers,
        kube_api_burst=max(1, settings.kube_api_burst // settings.workers),
    )


def worker_command(settings: Settings) -> list[str]:
    """The command line of an extra worker: its share of the API rate, no probes or metrics (the first process
    serves those), and ``--workers=1`` so that it spawns nothing and divides nothing again."""
    child = replace(per_process_settings(settings), workers=1, metrics_port=0, readiness_probe_port=0)
    return [sys.executable, "-m", "signer.cli", "serve", *child.to_argv()]


def _spawn_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Extra processes on the same port (SO_REUSEPORT); only the first process serves probes and metrics."""
    command = worker_command(settings)
    return [subprocess.Popen(command) for _ in range(settings.workers - 1)]


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.signer == "local":  # create the CA once, before any worker could race to create it
            LocalCA.open(settings.local_ca_dir, key_type=settings.local_ca_key_type)
        workers = _spawn_workers(settings) if settings.workers > 1 else []
    except (OSError, ValueError) as exc:
        logger.error("cannot start: {}", exc)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run(per_process_settings(settings), stop=stop)

    try:
        return asyncio.run(main())
    except StartupError as exc:
        logger.error("cannot start: {}", exc)
        return 2
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(10)
