"""One signing request's life as an API object, shared by the CertificateRequest and the CertificateSigningRequest
backends: create (1 write) → [approve: 1 write] → the shared watch sees the terminal state (no read) → delete in
the background (1 write), unless preserved.

The wait is bounded by the caller's timeout and by the RPC itself (cancellation reaches here); every return path,
cancellation included, deletes the object. A create whose answer was lost is deleted by name when the name was
chosen here (CertificateRequests); with ``generateName`` (CertificateSigningRequests) the name is unknown and the
leftover sweep removes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from loguru import logger

from bridge.certificate_request_watch import Issued, RequestWatch
from bridge.certificates import split_issued_chain, verify_issued_chain
from bridge.errors import BackendError, BackendUnavailable, IssuerFailed
from bridge.kube import KubeClient, KubeConflict, KubeError, KubeInvalid, KubeUnavailable, Obj, Resource
from bridge.metrics import BridgeMetrics
from clocks import Clock, within

DELETE_DRAIN_SECONDS = 10.0
DELETE_RETRY_SECONDS = 60.0
APPROVE_ATTEMPTS = 3
RPC_SHARE = 0.9  # of --request-timeout a workload's request object may wait (the rest: review, create, answer)

Approver = Callable[[Obj], Awaitable[None]]
ApprovalWrite = Callable[[str, Obj], Awaitable[Obj]]


def certificate_request_wait(certificate_request_timeout: float, request_timeout: float) -> float:
    """A workload's request object waits at most ``--certificate-request-timeout`` and at most 90 % of
    ``--request-timeout``: the RPC's bound also covers the TokenReview and the create, so with equal values (the
    defaults, 30 s) the CertificateRequest timeout could never fire first, and a request nobody signs would end as
    the RPC's generic DEADLINE_EXCEEDED instead of CERTIFICATE_REQUEST_TIMEOUT."""
    return min(certificate_request_timeout, request_timeout * RPC_SHARE)


def wait_seconds_for(purpose: str, certificate_request_timeout: float, request_timeout: float | None) -> float:
    """How long a request object of ``purpose`` may wait for its terminal state: the serving certificate is not
    under any RPC's bound; a workload's is (see :func:`certificate_request_wait`)."""
    if purpose == "serving" or request_timeout is None:
        return certificate_request_timeout
    return certificate_request_wait(certificate_request_timeout, request_timeout)


_OUTCOMES = {
    "CERTIFICATE_REQUEST_DENIED": "denied",
    "CERTIFICATE_REQUEST_INVALID": "invalid",
    "CERTIFICATE_REQUEST_FAILED": "failed",
    "CERTIFICATE_REQUEST_DELETED": "deleted",
    "CERTIFICATE_SIGNING_REQUEST_DENIED": "denied",
    "CERTIFICATE_SIGNING_REQUEST_FAILED": "failed",
    "CERTIFICATE_SIGNING_REQUEST_DELETED": "deleted",
    "APPROVAL_FAILED": "approve_failed",
}


def request_outcome(reason: str) -> str:
    """The ``outcome`` label of meshsigner_certificate_requests_total for a request that ended with ``reason``."""
    return _OUTCOMES.get(reason, "failed")


@dataclass(frozen=True)
class Answered:
    """How a request object ended: its name (the audit mirror names it) and the issuer's answer."""

    name: str
    issued: Issued


@dataclass(frozen=True)
class RequestKind:
    """How one kind of object is named in reasons and logs: ``prefix`` starts every reason code
    (CERTIFICATE_REQUEST_TIMEOUT, CERTIFICATE_SIGNING_REQUEST_TIMEOUT ...)."""

    resource: Resource
    namespace: str | None
    prefix: str
    what: str


class RequestLifecycle:
    def __init__(
        self,
        kube: KubeClient,
        kind: RequestKind,
        *,
        watch: RequestWatch,
        metrics: BridgeMetrics,
        preserve: bool,
        clock: Clock | None = None,
    ) -> None:
        self._kube = kube
        self._kind = kind
        self._watch = watch
        self._metrics = metrics
        self._preserve = preserve
        self._clock: Clock = clock or kube.clock
        self._deletes: set[asyncio.Task[None]] = set()

    async def run(
        self,
        body: Obj,
        purpose: str,
        wait_seconds: float,
        approve: Approver | None,
    ) -> Answered:
        """Create ``body``, approve it with ``approve`` (when given), and wait at most ``wait_seconds`` for the
        watch to see it end; the answer names the object created."""
        kind = self._kind
        outcome = "cancelled"
        started = self._clock.monotonic()
        name = str(body["metadata"].get("name") or "")
        # Shielded: a cancelled RPC does not stop the POST already handed to a pool thread, so the create runs to
        # its end and the object it may have made is deleted afterwards (by UID when the answer arrived).
        creating = asyncio.ensure_future(self._kube.create(kind.resource, kind.namespace, body))
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._metrics.outcomes.labels(purpose, "cancelled").inc()
            if not self._preserve:
                self._delete_after_create(creating, name)
            raise
        except KubeInvalid as exc:
            self._metrics.outcomes.labels(purpose, "create_failed").inc()
            raise IssuerFailed(f"{kind.prefix}_REFUSED", str(exc)) from None
        except KubeError as exc:
            self._metrics.outcomes.labels(purpose, "create_failed").inc()
            if isinstance(exc, KubeUnavailable) and not self._preserve and name:
                self._delete_later(name, None)  # the answer was lost, not necessarily the create
            raise BackendUnavailable(f"{kind.prefix}_CREATE_FAILED", str(exc)) from None
        name, uid = str(created["metadata"]["name"]), str(created["metadata"]["uid"])
        future = self._watch.register(name, uid)
        self._metrics.in_flight.inc()
        try:
            issued = await within(wait_seconds, self._approve_and_await(created, future, approve), self._clock)
            outcome = "issued"
            return Answered(name, issued)
        except TimeoutError:
            outcome = "timeout"
            raise BackendUnavailable(
                f"{kind.prefix}_TIMEOUT",
                f"{name} not signed within {wait_seconds:.1f}s (approved? signer working?)",
            ) from None
        except BackendError as exc:
            if outcome == "cancelled":
                outcome = request_outcome(exc.reason)
            raise
        finally:
            self._metrics.in_flight.dec()
            self._metrics.outcomes.labels(purpose, outcome).inc()
            self._metrics.seconds.labels(purpose).observe(self._clock.monotonic() - started)
            self._watch.forget(name)
            if not future.done():
                future.cancel()
            if not self._preserve:
                self._delete_later(name, uid)

    async def _approve_and_await(
        self, created: Obj, issued: asyncio.Future[Issued], approve: Approver | None
    ) -> Issued:
        if approve is not None:
            try:
                await approve(created)
            except KubeError as exc:
                raise BackendUnavailable("APPROVAL_FAILED", f"{created['metadata']['name']}: {exc}") from None
        return await issued

    async def approve(self, created: Obj, condition: Obj, *, decided: Collection[str], write: ApprovalWrite) -> None:
        """Add the Approved ``condition`` to ``created`` with ``write`` (the status or the approval subresource),
        re-reading after a conflict; a condition of a type in ``decided`` (someone else decided first) ends it
        without a write: the watch reports that decision."""
        kind, name, obj = self._kind, str(created["metadata"]["name"]), created
        for _ in range(APPROVE_ATTEMPTS):
            present = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "Approved"]
            if any(c.get("type") in decided for c in present):
                return
            obj.setdefault("status", {})["conditions"] = [*present, condition]
            try:
                await write(name, obj)
                return
            except KubeConflict:
                obj = await self._kube.get(kind.resource, kind.namespace, name)
        raise BackendUnavailable("APPROVAL_FAILED", f"{name}: kept conflicting with other writers")

    def verified_chain(
        self, issued: Issued, purpose: str, roots: tuple[x509.Certificate, ...]
    ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """The issued leaf and intermediates (``status.certificate``), verified to lead to ``roots``; a chain
        that cannot be parsed or does not verify is counted and refused (IssuerFailed)."""
        try:
            leaf, intermediates = split_issued_chain(issued.certificate_pem, what="status.certificate")
        except IssuerFailed:
            self._metrics.outcomes.labels(purpose, "bad_chain").inc()
            raise
        try:
            verify_issued_chain(leaf, intermediates, roots, now=self._clock.now())
        except IssuerFailed as exc:
            self._metrics.untrusted_chains.inc()
            self._metrics.outcomes.labels(purpose, "untrusted_chain").inc()
            logger.bind(event="untrusted_chain", purpose=purpose).error(
                "REFUSED an issued chain: {} (pinned roots: {})",
                exc.detail,
                "; ".join(r.subject.rfc4514_string() for r in roots),
            )
            raise
        return leaf, intermediates

    def _delete_later(self, name: str, uid: str | None) -> None:
        """Delete in the background: only the object with ``uid`` when known; by name alone when the create's
        answer was lost (the name was chosen here, at random, so it is this request's)."""
        self._track(self._delete(name, uid), name)

    def _delete_after_create(self, creating: asyncio.Future[Obj], name: str) -> None:
        """The RPC was cancelled during the create: once the create has ended, delete what it made."""

        async def delete() -> None:
            try:
                created = await creating
            except KubeUnavailable:
                if name:
                    await self._delete(name, None)
                # else: generateName, the name is unknown; the leftover sweep removes the object
            except KubeError:  # refused by the API server: nothing was created
                return
            else:
                await self._delete(str(created["metadata"]["name"]), str(created["metadata"]["uid"]))

        self._track(delete(), name or "generated")

    def _track(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"delete-{name}")
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)

    async def _delete(self, name: str, uid: str | None) -> None:
        """Delete, retrying through an API outage for up to DELETE_RETRY_SECONDS (then the sweep takes over). Only
        an outage is retried: a refusal (RBAC, invalid request) would be refused again for the whole minute."""
        deadline = self._clock.monotonic() + DELETE_RETRY_SECONDS
        delay = 0.25
        while True:
            try:
                await self._kube.delete(self._kind.resource, self._kind.namespace, name, uid)
                return
            except KubeConflict:
                return  # the UID precondition failed: that name is someone else's object now
            except KubeUnavailable as exc:
                if self._clock.monotonic() + delay > deadline:
                    self._delete_failed(name, exc)
                    return
            except KubeError as exc:
                self._delete_failed(name, exc)
                return
            await self._clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _delete_failed(self, name: str, error: KubeError) -> None:
        self._metrics.delete_failures.inc()
        logger.bind(event="delete_failed", name=name).warning(
            "cannot delete {} {} (the sweep will): {}", self._kind.what, name, error
        )

    async def close(self) -> None:
        """Finish the pending deletes (bounded), so a clean shutdown leaves nothing behind."""
        if self._deletes:
            await asyncio.wait(set(self._deletes), timeout=DELETE_DRAIN_SECONDS)
