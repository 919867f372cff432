"""Is the active issuer usable? Read at start-up and watched while active.

- An ACME issuer is refused: ACME CAs validate DNS names and cannot put SPIFFE URIs in SANs, so every workload
  request would fail or wait forever.
- A missing issuer, or one whose ``Ready`` condition is not True, makes meshsigner not ready and each request fail
  fast with UNAVAILABLE (``ISSUER_NOT_READY``) instead of creating CertificateRequests nobody will sign.
- An issuer type whose API cannot be read (an external issuer group that is not served, or RBAC without access)
  is "unknown": logged once, reported by the metric, and assumed usable; cert-manager remains the judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Any, Protocol

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge

from bridge.errors import BackendUnavailable, IssuerFailed
from bridge.kube import (
    KubeError,
    KubeForbidden,
    KubeNotFound,
    ListWatch,
    Obj,
    Resource,
    WatchSource,
    issuer_resource,
)
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from clocks import Clock

UNKNOWN_RECHECK_SECONDS = 60.0


class IssuerState(enum.Enum):
    PENDING = "pending"  # not read yet
    READY = "ready"
    NOT_READY = "not_ready"
    MISSING = "missing"
    ACME = "acme"
    UNKNOWN = "unknown"  # cannot be read; assumed usable
    NONE = "none"  # no issuer configured


def judge_issuer(obj: Obj | None) -> tuple[IssuerState, str]:
    """The state of an Issuer/ClusterIssuer object and a human reason."""
    if obj is None:
        return IssuerState.MISSING, "issuer not found"
    if (obj.get("spec") or {}).get("acme") is not None:
        return IssuerState.ACME, "ACME issuers cannot sign SPIFFE URI SANs; use a CA, Vault or external issuer"
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return IssuerState.READY, "ready"
            return IssuerState.NOT_READY, f"{condition.get('reason', '')}: {condition.get('message', '')}"[:300]
    return IssuerState.NOT_READY, "no Ready condition yet"


class IssuerSource(WatchSource, Protocol):
    """What the check needs of the API (KubeClient is one): the watch's list and stream, and one read."""

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...


class IssuerCheck:
    def __init__(
        self,
        kube: IssuerSource,
        selector: IssuerSelector,
        namespace: str,
        registry: CollectorRegistry,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or kube.clock  # the API's clock unless told otherwise
        self._kube = kube
        self._selector = selector
        self._namespace = namespace  # a namespaced Issuer must be in the CertificateRequests' namespace
        self.state = IssuerState.PENDING if selector.current else IssuerState.NONE
        self.reason = ""
        self._changed = asyncio.Event()
        self._probed: IssuerRef | None = None  # the issuer the last probe read, until the check moves on
        self._gauge = Gauge(
            "meshsigner_issuer_state",
            "1 for the active issuer's current state (ready, not_ready, missing, acme, unknown, pending, none)",
            ["state"],
            registry=registry,
            multiprocess_mode="livemax",  # with --workers: the state any live worker sees
        )
        self._publish()
        selector.subscribe(self._issuer_changed)

    @property
    def ready(self) -> bool:
        return self.state in (IssuerState.READY, IssuerState.UNKNOWN)

    def require_usable(self) -> None:
        """Raise the request's error when the active issuer cannot sign (PENDING passes: cert-manager decides)."""
        if self.state is IssuerState.ACME:
            raise IssuerFailed("ISSUER_ACME", self.reason)
        if self.state in (IssuerState.NOT_READY, IssuerState.MISSING):
            raise BackendUnavailable("ISSUER_NOT_READY", f"{self._selector.current}: {self.reason}")
        if self.state is IssuerState.NONE:
            raise BackendUnavailable("NO_ISSUER", "no active issuerRef is configured")

    def _publish(self) -> None:
        for state in IssuerState:
            self._gauge.labels(state.value).set(1 if state is self.state else 0)

    def _set_state(self, state: IssuerState, reason: str) -> None:
        if (state, reason) == (self.state, self.reason):
            return
        self.state, self.reason = state, reason
        self._publish()
        bound = logger.bind(event="issuer_state", issuer=str(self._selector.current), state=state.value)
        if state in (IssuerState.READY, IssuerState.UNKNOWN, IssuerState.PENDING):
            bound.info("issuer {} is {} ({})", self._selector.current, state.value, reason)
        else:
            bound.error("issuer {} is {}: {}", self._selector.current, state.value, reason)

    def _issuer_changed(self, ref: IssuerRef | None) -> None:
        self._set_state(IssuerState.PENDING if ref else IssuerState.NONE, "issuer changed")
        self._changed.set()

    async def probe(self) -> IssuerState:
        """One read of the active issuer (start-up); the watch keeps it current afterwards."""
        ref = self._probed = self._selector.current
        if ref is None:
            self._set_state(IssuerState.NONE, "no issuer configured")
            return self.state
        resource = issuer_resource(ref.kind, ref.group)
        try:
            obj = await self._kube.get(resource, self._namespace if resource.namespaced else None, ref.name)
        except KubeNotFound:
            obj = None
            with contextlib.suppress(KubeError):
                await self._kube.list(resource, self._namespace if resource.namespaced else None)
                self._set_state(*judge_issuer(None))
                return self.state
            self._set_state(IssuerState.UNKNOWN, f"the API does not serve {resource.plural}.{resource.group}")
            return self.state
        except KubeForbidden as exc:
            self._set_state(IssuerState.UNKNOWN, f"cannot read {resource.plural}.{resource.group}: {exc}")
            return self.state
        except KubeError as exc:
            logger.bind(event="issuer_probe_failed").warning("cannot read issuer {}: {}", ref, exc)
            return self.state
        self._set_state(*judge_issuer(obj))
        return self.state

    # WatchHandler for the active issuer
    def on_relist(self, objects: list[Obj]) -> None:
        self._set_state(*judge_issuer(objects[0] if objects else None))

    def on_event(self, kind: str, obj: Obj) -> None:
        self._set_state(*judge_issuer(None if kind == "DELETED" else obj))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            ref = self._selector.current
            watcher: asyncio.Task[None] | None = None
            if ref is not None:
                # start-up has just read this issuer: its state stands until the watch's own list
                state = self.state if self._probed == ref else await self.probe()
                resource = issuer_resource(ref.kind, ref.group)
                if state is not IssuerState.UNKNOWN:
                    watch = ListWatch(
                        self._kube,
                        resource,
                        self._namespace if resource.namespaced else None,
                        self,
                        field_selector=f"metadata.name={ref.name}",
                        name=f"issuer {ref}",
                    )
                    watcher = asyncio.create_task(watch.run(stop), name="issuer-watch")
            waiters: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(self._changed.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            if self.state is IssuerState.UNKNOWN:  # re-read later: the API may come to serve the issuer type
                waiters.add(asyncio.ensure_future(self._clock.sleep(UNKNOWN_RECHECK_SECONDS)))
            try:
                # the watcher too: a watch that ended by a bug must end this loop with it, not go stale unseen
                watched = waiters if watcher is None else {*waiters, watcher}
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._probed = None  # a new issuer, or the unknown type's re-check: read it again
                for waiter in waiters:
                    waiter.cancel()
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher  # re-raises the watch's own exception, if it ended with one
