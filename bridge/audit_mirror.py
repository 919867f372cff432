"""The audit mirror (``--mirror-certificate-signing-requests``): every decided request, allowed or refused by policy,
also becomes a certificates.k8s.io/v1 CertificateSigningRequest with meshsigner's own signer name
(``--mirror-signer-name``, default ``meshsigner.io/audit``: no real signer acts on it), so that ``kubectl get csr``
and the API server's audit log show who asked for which identity, what was decided and why, and what was issued.

Per decided request: create (the workload's CSR, annotations naming the caller, the requested identities, the
decision id, rule and reason, and the CertificateRequest it mirrors) → Approved or Denied through the approval
subresource with the decision's reason → for an issued certificate, ``status.certificate`` through the status
subresource. Mirrors older than ``--mirror-retention`` are deleted by a sweep (bridge/cleanup.py).

A mirror never fails and never holds up the workload's request: :meth:`AuditMirror.submit` only enqueues (O(1),
no await); a bounded queue is drained by two writers on their own Kubernetes client (own thread pool, own token
bucket: a share of the API rate limit the workload path does not compete for). While workload requests are being
signed the writers wait, unless the backlog reaches half the queue: during a burst mirrors are written late, not at
the workload's expense. A full queue, or a write the API
refuses, drops the mirror and counts it in ``meshsigner_mirror_dropped_total{reason}``.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import datetime

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.certificate_request_watch import LABEL_KEY, LABEL_SELECTOR, LABEL_VALUE
from bridge.cleanup import LeftoverSweeper
from bridge.kube import CERTIFICATE_SIGNING_REQUESTS, CSR_GROUP, KubeClient, KubeError, Obj
from bridge.kubernetes_csr import PURPOSE_LABEL, csr_condition, signer_field_selector
from bridge.signing import ServingMaterial, SignedChain, SigningBackend, SigningRequest
from clocks import Clock

DEFAULT_SIGNER_NAME = "meshsigner.io/audit"
QUEUE_ENTRIES = 5000  # a burst of this many decisions is mirrored late rather than dropped (~3 KB each)
WRITERS = 2
MIRROR_USAGES = ["digital signature", "key encipherment", "server auth", "client auth"]
AUDIT_SELECTOR = f"{LABEL_SELECTOR},{PURPOSE_LABEL}=audit"
MAX_ANNOTATION = 1000

CALLER_ANNOTATION = "meshsigner.io/caller"
NODE_ANNOTATION = "meshsigner.io/node-principal"
IDENTITIES_ANNOTATION = "meshsigner.io/requested-identities"
DECISION_ID_ANNOTATION = "meshsigner.io/decision-id"
RULE_ANNOTATION = "meshsigner.io/rule"
REASON_ANNOTATION = "meshsigner.io/reason"
MIRRORS_ANNOTATION = "meshsigner.io/mirrors"
DECISION_LABEL = "meshsigner.io/decision"


@dataclass(frozen=True, slots=True)
class MirrorEntry:
    """One decided request, in the bridge's own terms (the front door converts its decision into this)."""

    decision_id: str
    csr_pem: str
    caller: str  # <td>/ns/<ns>/sa/<sa>
    requested_identities: tuple[str, ...]
    allowed: bool
    reason: str  # the decision's reason code
    rule: str = ""  # policy/rule that granted or denied
    message: str = ""
    node_principal: str = ""  # the node proxy that impersonated, if any
    chain_pem: str = ""  # the issued chain, leaf first (allowed and issued only)
    mirrors: str = ""  # the CertificateRequest / CertificateSigningRequest it mirrors


@dataclass(frozen=True)
class MirrorOptions:
    signer_name: str = DEFAULT_SIGNER_NAME
    retention_seconds: float = 3600.0
    queue_entries: int = QUEUE_ENTRIES
    writers: int = WRITERS


class MirrorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "meshsigner_mirror_dropped_total",
            "Audit mirrors not written, by reason (queue_full, no_csr, api_error, shutdown)",
            ["reason"],
            registry=registry,
        )
        self.written = Counter(
            "meshsigner_mirror_written_total",
            "Audit mirror CertificateSigningRequests written, by decision (allowed, denied)",
            ["decision"],
            registry=registry,
        )
        self.queued = Gauge(
            "meshsigner_mirror_queued",
            "Audit mirrors waiting to be written",
            registry=registry,
            multiprocess_mode="livesum",
        )


def _annotation(value: str) -> str:
    return value[:MAX_ANNOTATION]


def mirror_object(entry: MirrorEntry, signer_name: str) -> Obj:
    """The CertificateSigningRequest that records ``entry``."""
    annotations = {
        CALLER_ANNOTATION: entry.caller,
        IDENTITIES_ANNOTATION: ",".join(entry.requested_identities),
        DECISION_ID_ANNOTATION: entry.decision_id,
        REASON_ANNOTATION: entry.reason,
        RULE_ANNOTATION: entry.rule,
    }
    if entry.node_principal:
        annotations[NODE_ANNOTATION] = entry.node_principal
    if entry.mirrors:
        annotations[MIRRORS_ANNOTATION] = entry.mirrors
    return {
        "apiVersion": f"{CSR_GROUP}/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {
            "generateName": "meshsigner-audit-",
            "labels": {
                LABEL_KEY: LABEL_VALUE,
                PURPOSE_LABEL: "audit",
                DECISION_LABEL: "allowed" if entry.allowed else "denied",
            },
            "annotations": {key: _annotation(value) for key, value in annotations.items()},
        },
        "spec": {
            "request": base64.b64encode(entry.csr_pem.encode("ascii")).decode("ascii"),
            "signerName": signer_name,
            "usages": MIRROR_USAGES,
        },
    }


def decision_condition(entry: MirrorEntry, now: datetime) -> Obj:
    """Approved (allowed) or Denied (refused), with the decision's reason, rule and message."""
    rule = f" by {entry.rule}" if entry.rule else ""
    detail = f": {entry.message}" if entry.message else ""
    return csr_condition(
        "Approved" if entry.allowed else "Denied",
        "MeshsignerPolicyAllowed" if entry.allowed else "MeshsignerPolicyDenied",
        f"decision {entry.decision_id}: {entry.reason}{rule}{detail}",
        now,
    )


class AuditMirror:
    def __init__(
        self,
        kube: KubeClient,
        options: MirrorOptions,
        *,
        registry: CollectorRegistry,
        clock: Clock | None = None,
    ) -> None:
        self._kube = kube  # the mirror's own client: its own pool and token bucket
        self._options = options
        self._clock: Clock = clock or kube.clock
        self.metrics = MirrorMetrics(registry)
        self._queue: asyncio.Queue[MirrorEntry] = asyncio.Queue(options.queue_entries)
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._signing = 0  # workload requests inside the backend right now
        self._quiet = asyncio.Event()  # set while none is
        self._quiet.set()
        self.sweeper = LeftoverSweeper(
            kube,
            None,
            registry=registry,
            resource=CERTIFICATE_SIGNING_REQUESTS,
            label_selector=AUDIT_SELECTOR,
            field_selector=signer_field_selector(options.signer_name),
            min_age_seconds=options.retention_seconds,
            interval_seconds=max(1.0, min(60.0, options.retention_seconds / 4)),
            what="audit mirror CertificateSigningRequests",
            metric="meshsigner_mirror_expired_total",
            clock=self._clock,
        )

    @property
    def signer_name(self) -> str:
        return self._options.signer_name

    def submit(self, entry: MirrorEntry) -> None:
        """Queue ``entry`` for writing; never blocks, never raises. Dropped and counted when it cannot be queued."""
        if not entry.csr_pem:
            self.metrics.dropped.labels("no_csr").inc()
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.metrics.dropped.labels("queue_full").inc()
            return
        self._idle.clear()
        self.metrics.queued.inc()

    def signing_started(self) -> None:
        """A workload request entered the backend: mirror writes wait (see :meth:`_writer`)."""
        self._signing += 1
        self._quiet.clear()

    def signing_finished(self) -> None:
        self._signing -= 1
        if self._signing <= 0:
            self._signing = 0
            self._quiet.set()

    async def drained(self) -> None:
        """Wait until everything queued so far has been written or dropped (tests, shutdown)."""
        await self._idle.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """The writers, until ``stop``."""
        writers = [asyncio.create_task(self._writer(stop)) for _ in range(max(1, self._options.writers))]
        try:
            await stop.wait()
        finally:
            for writer in writers:
                writer.cancel()
            await asyncio.gather(*writers, return_exceptions=True)
            # what is still queued at shutdown is not written (draining at the mirror's share could take minutes)
            unwritten = self._queue.qsize() + self._busy
            if unwritten:
                self.metrics.dropped.labels("shutdown").inc(unwritten)
                logger.bind(event="mirror_dropped", count=unwritten).warning(
                    "{} audit mirrors still queued at shutdown are not written", unwritten
                )

    async def _writer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            entry = await self._queue.get()
            self._busy += 1
            try:
                # The workload goes first: while requests are being signed the mirror waits (the queue holds the
                # backlog), unless the backlog reaches half the queue, when it writes at its own API share anyway.
                if self._queue.qsize() < self._options.queue_entries // 2:
                    await self._quiet.wait()
                self.metrics.queued.dec()
                await self.write(entry)
            finally:
                self._busy -= 1
                if self._queue.empty() and self._busy == 0:
                    self._idle.set()

    async def write(self, entry: MirrorEntry) -> None:
        """Create the mirror, decide it, and write the certificate; an API failure drops it (counted)."""
        try:
            created = await self._kube.create(
                CERTIFICATE_SIGNING_REQUESTS, None, mirror_object(entry, self._options.signer_name)
            )
            name = str(created["metadata"]["name"])
            created.setdefault("status", {})["conditions"] = [decision_condition(entry, self._clock.now())]
            decided = await self._kube.update_approval(name, created)
            if entry.allowed and entry.chain_pem:
                decided.setdefault("status", {})["certificate"] = base64.b64encode(
                    entry.chain_pem.encode("ascii")
                ).decode("ascii")
                await self._kube.replace_status(CERTIFICATE_SIGNING_REQUESTS, None, name, decided)
        except KubeError as exc:
            self.metrics.dropped.labels("api_error").inc()
            logger.bind(event="mirror_dropped", decision_id=entry.decision_id).warning(
                "audit mirror of decision {} not written: {}", entry.decision_id, exc
            )
            return
        self.metrics.written.labels("allowed" if entry.allowed else "denied").inc()


class SigningActivityBackend:
    """Wraps any backend so that the mirror knows when workload requests are being signed (it writes between
    them): the backends themselves stay unaware of the mirror."""

    def __init__(self, backend: SigningBackend, mirror: AuditMirror) -> None:
        self.inner = backend
        self._mirror = mirror

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def ca_not_after(self) -> datetime | None:
        return self.inner.ca_not_after

    async def sign(self, request: SigningRequest) -> SignedChain:
        self._mirror.signing_started()
        try:
            return await self.inner.sign(request)
        finally:
            self._mirror.signing_finished()

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        return await self.inner.issue_serving_certificate(dns_names, duration_seconds, key_algorithm, key_size)


__all__ = ["AuditMirror", "MirrorEntry", "MirrorOptions", "SigningActivityBackend", "decision_condition"]
