"""The serving certificate is renewed at 2/3 of its life, on the injected clock; a failed renewal keeps the current
certificate and is retried."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from bridge.errors import BackendUnavailable
from bridge.local_ca import LocalCA
from bridge.signing import ServingMaterial
from signer.metrics import ServerMetrics
from signer.serving_tls import RETRY_SECONDS, ServingCertificate
from tests.support.clock import ManualClock
from tests.support.waiting import until_true

LIFETIME = 3600.0


class FlakyCA:
    """A local CA whose serving-certificate issuance can be switched off (an issuer outage)."""

    def __init__(self, ca: LocalCA) -> None:
        self.ca = ca
        self.down = False

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        if self.down:
            raise BackendUnavailable("ISSUER_NOT_READY", "outage")
        return await self.ca.issue_serving_certificate(dns_names, duration_seconds, key_algorithm, key_size)


def _serving(tmp_path: Path, clock: ManualClock) -> tuple[ServingCertificate, FlakyCA]:
    backend = FlakyCA(LocalCA.open(tmp_path / "ca"))
    serving = ServingCertificate(
        backend,  # type: ignore[arg-type]  # only issue_serving_certificate is used here
        dns_names=("signer.test",),
        duration_seconds=LIFETIME,
        key_algorithm="ECDSA",
        key_size=256,
        metrics=ServerMetrics(CollectorRegistry()),
        clock=clock,
    )
    return serving, backend


async def test_renewed_at_two_thirds_of_its_life(tmp_path: Path) -> None:
    clock = ManualClock(start=datetime.now(UTC))  # the CA stamps validity from the real clock
    serving, _ = _serving(tmp_path, clock)
    first = await serving.obtain()
    assert serving.ready
    stop = asyncio.Event()
    renewal = asyncio.create_task(serving.renew_forever(stop))
    await until_true(lambda: clock.sleeper_count == 1, "the renewal timer armed")
    two_thirds = (first.not_after - clock.now()).total_seconds() * 2 / 3
    await clock.advance(two_thirds - 5)
    assert serving.material is first
    await clock.advance(5)
    await until_true(lambda: serving.material is not first, "the certificate renewed")
    stop.set()
    await renewal


async def test_a_failed_renewal_keeps_the_certificate_and_retries(tmp_path: Path) -> None:
    clock = ManualClock(start=datetime.now(UTC))
    serving, backend = _serving(tmp_path, clock)
    first = await serving.obtain()
    stop = asyncio.Event()
    renewal = asyncio.create_task(serving.renew_forever(stop))
    await until_true(lambda: clock.sleeper_count == 1, "the renewal timer armed")
    backend.down = True
    await clock.advance((first.not_after - clock.now()).total_seconds() * 2 / 3)
    await until_true(lambda: clock.sleeper_count == 1, "the retry timer armed")
    assert serving.material is first and serving.ready
    backend.down = False
    await clock.advance(RETRY_SECONDS)
    await until_true(lambda: serving.material is not first, "renewed on the retry")
    stop.set()
    await renewal


async def test_not_ready_once_expired(tmp_path: Path) -> None:
    clock = ManualClock(start=datetime.now(UTC))
    serving, _ = _serving(tmp_path, clock)
    material = await serving.obtain()
    await clock.advance((material.not_after - clock.now()).total_seconds() + 1)
    assert not serving.ready
