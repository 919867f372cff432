"""The gRPC listener's own certificate: issued by the active signer (retried until it is), renewed at 2/3 of its
life, hot-swapped.

gRPC's dynamic server credentials ask ``_fetch`` at each new handshake whether a new configuration exists, so a
renewed certificate takes effect for new connections without a restart.
"""

from __future__ import annotations

import asyncio

import grpc
from loguru import logger

from bridge.signing import ServingMaterial, SigningBackend
from clocks import Clock, sleep_unless_stopped
from signer.metrics import ServerMetrics

RETRY_SECONDS = 20.0  # after a failed renewal (the current certificate is still valid)
FIRST_ISSUE_RETRY_START, FIRST_ISSUE_RETRY_MAX = 0.2, 5.0  # before the first one: the server waits on it


class ServingCertificate:
    def __init__(
        self,
        backend: SigningBackend,
        *,
        dns_names: tuple[str, ...],
        duration_seconds: float,
        key_algorithm: str,
        key_size: int,
        metrics: ServerMetrics,
        clock: Clock,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._dns_names = dns_names
        self._duration = duration_seconds
        self._algorithm = key_algorithm
        self._size = key_size
        self._metrics = metrics
        self._current: ServingMaterial | None = None
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @property
    def ready(self) -> bool:
        return self._current is not None and self._current.not_after > self._clock.now()

    @property
    def material(self) -> ServingMaterial | None:
        return self._current

    async def obtain(self) -> ServingMaterial:
        material = await self._backend.issue_serving_certificate(
            self._dns_names, self._duration, self._algorithm, self._size
        )
        self._current = material
        self._metrics.serving_certificate_expiry.set(material.not_after.timestamp())
        logger.bind(event="serving_certificate", not_after=material.not_after.isoformat()).info(
            "serving certificate obtained for {}", ",".join(self._dns_names)
        )
        return material

    async def obtain_until_issued(self, stop: asyncio.Event) -> bool:
        """Retry until the issuer signs the serving certificate (or stop); False when stopped first."""
        delay = FIRST_ISSUE_RETRY_START
        while not stop.is_set():
            try:
                await self.obtain()
                return True
            except Exception as exc:  # any backend trouble (API down, issuer not ready): keep trying
                logger.bind(event="serving_certificate_pending").warning(
                    "serving certificate not issued yet ({}); retrying in {:.1f}s", exc, delay
                )
            if await sleep_unless_stopped(self._clock, stop, delay):
                break
            delay = min(delay * 2, FIRST_ISSUE_RETRY_MAX)
        return False

    def credentials(self) -> grpc.ServerCredentials:
        if self._current is None:
            raise RuntimeError("obtain() the serving certificate first")
        initial = grpc.ssl_server_certificate_configuration([(self._current.key_pem, self._current.chain_pem)])
        # gRPC documents None from the fetch callback as "no new configuration"; its type stubs omit that case
        fetch = self._fetch
        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]
            require_client_authentication=False,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's C core on its own threads at each handshake: hand over a renewed config once.
        pending, self._pending = self._pending, None
        return pending

    def renew_delay(self) -> float:
        assert self._current is not None
        now = self._clock.now()
        lifetime = (self._current.not_after - now).total_seconds()
        return max(1.0, lifetime * 2 / 3)

    async def renew_forever(self, stop: asyncio.Event) -> None:
        delay = self.renew_delay()
        while not await sleep_unless_stopped(self._clock, stop, delay):
            try:
                material = await self.obtain()
            except Exception as exc:  # any backend trouble: keep the old certificate and retry
                logger.bind(event="serving_certificate_renewal_failed").error("renewal failed: {}", exc)
                delay = RETRY_SECONDS
                continue
            self._pending = grpc.ssl_server_certificate_configuration([(material.key_pem, material.chain_pem)])
            delay = self.renew_delay()
