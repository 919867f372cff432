"""Sweeping CertificateRequests left behind by a crashed replica (istio-csr#73: leftovers piled up until
cert-manager was OOM-killed).

Every object meshsigner creates carries its label. An object older than twice the request timeout (the margin
capped at 30 s) cannot belong to a request still in flight on any replica (each replica gives up at that timeout
and deletes), so the sweep deletes it, at start-up and then periodically. The UID precondition makes sure a
newer object that reused the name is never touched.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol

from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from bridge.certificate_request_watch import LABEL_SELECTOR
from bridge.kube import CERTIFICATE_REQUESTS, KubeError, Obj, Resource
from clocks import Clock, SystemClock, sleep_unless_stopped

MAX_MARGIN_SECONDS = 30.0  # clock skew and delete latency; never more than the timeout itself


def _created(obj: Obj) -> datetime | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None


def leftovers(objects: list[Obj], *, older_than_seconds: float, now: datetime) -> list[Obj]:
    """The objects created more than ``older_than_seconds`` before ``now``."""
    old = []
    for obj in objects:
        created = _created(obj)
        if created is not None and (now - created).total_seconds() > older_than_seconds:
            old.append(obj)
    return old


class ObjectStore(Protocol):
    """What the sweep needs of the API (KubeClient is one)."""

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]: ...

    async def delete(self, resource: Resource, namespace: str, name: str, uid: str | None = None) -> None: ...


class LeftoverSweeper:
    def __init__(
        self,
        kube: ObjectStore,
        namespace: str,
        *,
        request_timeout_seconds: float,
        registry: CollectorRegistry,
        interval_seconds: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._kube = kube
        self._namespace = namespace
        self._min_age_seconds = request_timeout_seconds + min(MAX_MARGIN_SECONDS, request_timeout_seconds)
        self._interval = interval_seconds
        self.deleted = Counter(
            "meshsigner_certificate_requests_swept_total",
            "Leftover CertificateRequests (older than the request timeout) deleted by the sweep",
            registry=registry,
        )

    async def sweep(self) -> int:
        try:
            objects, _ = await self._kube.list(CERTIFICATE_REQUESTS, self._namespace, label_selector=LABEL_SELECTOR)
        except KubeError as exc:
            logger.bind(event="sweep_failed").warning("cannot list leftover CertificateRequests: {}", exc)
            return 0
        removed = 0
        for obj in leftovers(objects, older_than_seconds=self._min_age_seconds, now=self._clock.now()):
            metadata = obj["metadata"]
            try:
                await self._kube.delete(CERTIFICATE_REQUESTS, self._namespace, metadata["name"], metadata.get("uid"))
            except KubeError as exc:
                logger.bind(event="sweep_failed").warning("cannot delete {}: {}", metadata["name"], exc)
                continue
            removed += 1
        if removed:
            self.deleted.inc(removed)
            logger.bind(event="swept", count=removed).warning(
                "deleted {} leftover CertificateRequests older than {:.0f}s", removed, self._min_age_seconds
            )
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            await sleep_unless_stopped(self._clock, stop, self._interval)
