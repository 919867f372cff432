"""``meshsigner serve``: the one place that builds every piece, starts the tasks and owns the shutdown order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry

from bridge.local_ca import LocalCA
from bridge.signing import SigningBackend
from policies.builtin import OwnIdentityOnly
from policies.model import IdentityDecider
from policies.reloading import PolicyStore
from signer.auth.base import Authenticator
from signer.auth.jwks import JwksAuthenticator
from signer.decision_log import DecisionLog
from signer.grpc_server import build_server, set_serving
from signer.logs import configure_logging
from signer.metrics import ServerMetrics
from signer.probes import ProbeServer
from signer.service import CertificateService, ServiceConfig
from signer.serving_tls import ServingCertificate
from signer.settings import Settings

SHUTDOWN_GRACE_SECONDS = 5.0


class StartupError(RuntimeError):
    """Start-up cannot continue; the message says what to fix."""


def build_backend(settings: Settings) -> SigningBackend:
    if settings.signer == "local":
        try:
            return LocalCA.open(settings.local_ca_dir, key_type=settings.local_ca_key_type)
        except (OSError, ValueError) as exc:
            raise StartupError(f"--local-ca-dir: {exc}") from exc
    raise StartupError(f"--signer {settings.signer} is not available in this build yet; use --signer local")


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.authenticator == "jwks":
        authenticator = JwksAuthenticator(
            settings.jwks_file, issuer=settings.token_issuer, audiences=settings.token_audiences
        )
        if not authenticator.ready:
            raise StartupError(f"--jwks-file {settings.jwks_file}: no usable keys (see the log above)")
        return authenticator
    raise StartupError(
        f"--authenticator {settings.authenticator} is not available in this build yet; use --authenticator jwks"
    )


def build_decider(settings: Settings, registry: CollectorRegistry) -> IdentityDecider:
    """The YAML policy store when --policy-dir is set (not ready, not fatal, while no valid set exists);
    otherwise istio-csr's built-in rule."""
    if settings.policy_dir:
        if not Path(settings.policy_dir).is_dir():
            raise StartupError(f"--policy-dir {settings.policy_dir}: not a directory")
        return PolicyStore(settings.policy_dir, trust_domain=settings.trust_domain, registry=registry)
    return OwnIdentityOnly(settings.trust_domain, int(settings.max_client_certificate_duration))


class Readiness:
    """Ready only when the server can actually issue (O8 of robustness.md)."""

    def __init__(self, **checks: object) -> None:
        self._checks = checks
        self.listening = False

    def __call__(self) -> list[str]:
        reasons = [f"{name} not ready" for name, part in self._checks.items() if not getattr(part, "ready", False)]
        if not self.listening:
            reasons.append("not listening")
        return reasons


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    backend = build_backend(settings)
    authenticator = build_authenticator(settings)
    decider = build_decider(settings, registry)
    decision_log = DecisionLog(settings.decision_log or None)
    serving = ServingCertificate(
        backend,
        dns_names=settings.serving_certificate_dns_names,
        duration_seconds=settings.serving_certificate_duration,
        key_algorithm=settings.serving_signature_algorithm,
        key_size=settings.serving_certificate_key_size,
        metrics=metrics,
    )
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
    )
    server, health_servicer, port = build_server(service, serving.credentials(), settings.serving_address)
    readiness = Readiness(backend=backend, authenticator=authenticator, policy=decider, serving_certificate=serving)
    probes: list[ProbeServer] = []
    if settings.readiness_probe_port:
        probe = ProbeServer(readiness=readiness, readiness_path=settings.readiness_probe_path)
        await probe.start("0.0.0.0", settings.readiness_probe_port)
        probes.append(probe)
    if settings.metrics_port:
        metrics_server = ProbeServer(registry=registry)
        await metrics_server.start("0.0.0.0", settings.metrics_port)
        probes.append(metrics_server)

    await server.start()
    readiness.listening = True
    await set_serving(health_servicer, True)
    tasks = {asyncio.create_task(serving.renew_forever(stop), name="serving-certificate-renewal")}
    if isinstance(authenticator, JwksAuthenticator):
        tasks.add(asyncio.create_task(authenticator.watch(stop), name="jwks-watch"))
    if isinstance(decider, PolicyStore):
        tasks.add(asyncio.create_task(decider.watch(stop), name="policy-watch"))
    logger.bind(event="started", port=port, signer=settings.signer, authenticator=settings.authenticator).info(
        "meshsigner serving on {} (trust domain {})", settings.serving_address, settings.trust_domain
    )
    try:
        await stop.wait()
    finally:
        readiness.listening = False
        await set_serving(health_servicer, False)
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for probe in probes:
            await probe.close()
        decision_log.close()
        logger.bind(event="stopped").info("meshsigner stopped")
    return 0


def _spawn_workers(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Extra processes on the same port (SO_REUSEPORT); only the first process serves probes and metrics."""
    child = replace(settings, workers=1, metrics_port=0, readiness_probe_port=0)
    command = [sys.executable, "-m", "signer.cli", "serve", *child.to_argv()]
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
        return await run(settings, stop=stop)

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
