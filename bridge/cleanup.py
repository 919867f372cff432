"""Sweeping objects left behind by a crashed replica (istio-csr#73: leftovers piled up until cert-manager was
OOM-killed): CertificateRequests, CertificateSigningRequests, and (with a retention age instead of the request
timeout) the audit mirror's CertificateSigningRequests. One sweeper, told which objects are its own.

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

    async def delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None = None) -> None: ...


def min_age_after_timeout(request_timeout_seconds: float) -> float:
    """The age past which no replica can still be waiting on an object: the timeout plus a margin."""
    return request_timeout_seconds + min(MAX_MARGIN_SECONDS, request_timeout_seconds)


class LeftoverSweeper:
    """Deletes this server's objects (``resource`` in ``namespace``, or cluster-wide for a cluster-scoped resource,
    selected by label and field selector) once older than ``min_age_seconds`` (by default: the request timeout
    plus a margin)."""

    def __init__(
        self,
        kube: ObjectStore,
        namespace: str | None,
        *,
        request_timeout_seconds: float = 30.0,
        registry: CollectorRegistry,
        interval_seconds: float = 60.0,
        clock: Clock | None = None,
        resource: Resource = CERTIFICATE_REQUESTS,
        label_selector: str = LABEL_SELECTOR,
        field_selector: str = "",
        min_age_seconds: float | None = None,
        what: str = "CertificateRequests",
        metric: str = "meshsigner_certificate_requests_swept_total",
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._kube = kube
        self._namespace = namespace
        self._resource = resource
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._what = what
        self._min_age_seconds = (
            min_age_after_timeout(request_timeout_seconds) if min_age_seconds is None else min_age_seconds
        )
        self._interval = interval_seconds
        self.deleted = Counter(metric, f"Leftover {what} deleted by the sweep", registry=registry)

    async def sweep(self) -> int:
        try:
            objects, _ = await self._kube.list(
                self._resource,
                self._namespace,
                label_selector=self._label_selector,
                field_selector=self._field_selector,
            )
        except KubeError as exc:
            logger.bind(event="sweep_failed").warning("cannot list leftover {}: {}", self._what, exc)
            return 0
        removed = 0
        for obj in leftovers(objects, older_than_seconds=self._min_age_seconds, now=self._clock.now()):
            metadata = obj["metadata"]
            try:
                await self._kube.delete(self._resource, self._namespace, metadata["name"], metadata.get("uid"))
            except KubeError as exc:
                logger.bind(event="sweep_failed").warning("cannot delete {}: {}", metadata["name"], exc)
                continue
            removed += 1
        if removed:
            self.deleted.inc(removed)
            logger.bind(event="swept", count=removed).warning(
                "deleted {} leftover {} older than {:.0f}s", removed, self._what, self._min_age_seconds
            )
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            await sleep_unless_stopped(self._clock, stop, self._interval)
