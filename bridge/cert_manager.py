"""The cert-manager backend: one CertificateRequest per allowed CSR, resolved by the shared watch, always deleted.

Per request (bridge/request_lifecycle.py, shared with the Kubernetes CSR backend): create (1 write) → [approve: 1
write, with ``--approve-certificate-requests``] → the shared watch sees the terminal state (no read) → delete in the
background (1 write), unless ``--preserve-certificate-requests``. The wait is bounded by
``--certificate-request-timeout`` and by the RPC itself (cancellation reaches here); every return path, cancellation
included, deletes the object. The issued chain is parsed with bounds and must lead to a pinned root before anything
is returned.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from loguru import logger

from bridge.certificate_request_watch import LABEL_KEY, LABEL_VALUE, CertificateRequestWatch, Issued
from bridge.certificates import certificate_pem, split_issued_chain, verify_issued_chain
from bridge.errors import BackendUnavailable, IssuerFailed
from bridge.issuer_check import IssuerCheck
from bridge.kube import CERTIFICATE_REQUESTS, KubeClient, KubeConflict, Obj
from bridge.metrics import BridgeMetrics
from bridge.request_lifecycle import RequestKind, RequestLifecycle
from bridge.root_bundle import RootBundle, parse_roots
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from bridge.signing import ServingMaterial, SignedChain, SigningRequest, new_serving_key, serving_material
from clocks import Clock

IDENTITIES_ANNOTATION = "istio.cert-manager.io/identities"
SERVING_IDENTITY = "istio-csr-serving"
PURPOSE_LABEL = "meshsigner.io/purpose"
NAME_PREFIX = "meshsigner-"
RPC_SHARE = 0.9  # of --request-timeout a workload's CertificateRequest may wait (the rest: review, create, answer)


@dataclass(frozen=True)
class CertManagerOptions:
    namespace: str = "istio-system"
    annotations: tuple[tuple[str, str], ...] = ()
    preserve: bool = False
    approve: bool = False
    timeout_seconds: float = 30.0  # --certificate-request-timeout
    request_timeout_seconds: float | None = None  # --request-timeout, the RPC's own bound (workload requests)

    def wait_seconds(self, purpose: str) -> float:
        """How long a CertificateRequest may wait for its terminal state; see :func:`certificate_request_wait`."""
        if purpose == "serving" or self.request_timeout_seconds is None:
            return self.timeout_seconds  # the serving certificate is not under any RPC's bound
        return certificate_request_wait(self.timeout_seconds, self.request_timeout_seconds)


def certificate_request_wait(certificate_request_timeout: float, request_timeout: float) -> float:
    """A workload's CertificateRequest waits at most ``--certificate-request-timeout`` and at most 90 % of
    ``--request-timeout``: the RPC's bound also covers the TokenReview and the create, so with equal values (the
    defaults, 30 s) the CertificateRequest timeout could never fire first, and a request nobody signs would end as
    the RPC's generic DEADLINE_EXCEEDED instead of CERTIFICATE_REQUEST_TIMEOUT."""
    return min(certificate_request_timeout, request_timeout * RPC_SHARE)


def workload_usages(csr: x509.CertificateSigningRequest) -> list[str]:
    """The CR usages for a workload CSR: what its KU/EKU extensions ask for (cert-manager's webhook refuses a CR
    whose usages disagree with the CSR), else digital signature, key encipherment, client and server auth."""
    usages: list[str] = []
    try:
        key_usage = csr.extensions.get_extension_for_class(x509.KeyUsage).value
        if key_usage.digital_signature:
            usages.append("digital signature")
        if key_usage.key_encipherment:
            usages.append("key encipherment")
    except x509.ExtensionNotFound:
        usages += ["digital signature", "key encipherment"]
    try:
        eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH in eku:
            usages.append("client auth")
        if ExtendedKeyUsageOID.SERVER_AUTH in eku:
            usages.append("server auth")
    except x509.ExtensionNotFound:
        usages += ["client auth", "server auth"]
    return usages


def new_request_name() -> str:
    """A CertificateRequest name chosen before the create (80 random bits), so that a create whose answer never
    arrives (cancelled RPC, timed-out response) can still be deleted by name."""
    return NAME_PREFIX + secrets.token_hex(10)


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


def go_duration(seconds: float) -> str:
    return f"{max(1, int(seconds))}s"


class CertManagerBackend:
    def __init__(
        self,
        kube: KubeClient,
        options: CertManagerOptions,
        *,
        issuers: IssuerSelector,
        issuer_check: IssuerCheck,
        watch: CertificateRequestWatch,
        roots: RootBundle,
        metrics: BridgeMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or kube.clock  # the API's clock unless told otherwise
        self._kube = kube
        self._options = options
        self._issuers = issuers
        self._issuer_check = issuer_check
        self._watch = watch
        self._roots = roots
        self._metrics = metrics
        self._lifecycle = RequestLifecycle(
            kube,
            RequestKind(CERTIFICATE_REQUESTS, options.namespace, "CERTIFICATE_REQUEST", "CertificateRequest"),
            watch=watch,
            metrics=metrics,
            preserve=options.preserve,
            outcome_of=request_outcome,
            clock=self._clock,
        )

    @property
    def ready(self) -> bool:
        return self._issuers.ready and self._issuer_check.ready and self._watch.ready and self._roots.ready

    @property
    def ca_not_after(self) -> datetime | None:
        return None  # the issuer's CA is not known here; cert-manager caps to it

    # --- requests ----------------------------------------------------------------------------------------------
    def _issuer(self) -> IssuerRef:
        ref = self._issuers.current
        if ref is None:
            raise BackendUnavailable("NO_ISSUER", "no active issuerRef is configured")
        self._issuer_check.require_usable()
        if not self._watch.ready:
            raise BackendUnavailable("WATCH_NOT_SYNCED", "the CertificateRequest watch has not listed yet")
        return ref

    def _certificate_request(
        self, csr_pem: bytes, seconds: float, ref: IssuerRef, identities: str, usages: list[str], purpose: str
    ) -> Obj:
        annotations = {IDENTITIES_ANNOTATION: identities, **dict(self._options.annotations)}
        return {
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "name": new_request_name(),
                "namespace": self._options.namespace,
                "labels": {LABEL_KEY: LABEL_VALUE, PURPOSE_LABEL: purpose},
                "annotations": annotations,
            },
            "spec": {
                "request": base64.b64encode(csr_pem).decode("ascii"),
                "duration": go_duration(seconds),
                "isCA": False,
                "usages": usages,
                "issuerRef": ref.as_dict(),
            },
        }

    async def _approve(self, created: Obj) -> None:
        condition = {
            "type": "Approved",
            "status": "True",
            "reason": "meshsigner",
            "message": "approved by meshsigner after its own checks and policy allowed the request",
            "lastTransitionTime": self._clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        obj = created
        name = created["metadata"]["name"]
        for _ in range(3):
            status = obj.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Approved"]
            if any(c.get("type") == "Denied" for c in conditions):
                return  # someone else decided first; the watch reports the denial
            status["conditions"] = [*conditions, condition]
            try:
                await self._kube.replace_status(CERTIFICATE_REQUESTS, self._options.namespace, name, obj)
                return
            except KubeConflict:
                obj = await self._kube.get(CERTIFICATE_REQUESTS, self._options.namespace, name)
        raise BackendUnavailable("APPROVAL_FAILED", f"{name}: kept conflicting with other writers")

    async def _request(self, body: Obj, purpose: str) -> Issued:
        approve = self._approve if self._options.approve else None
        return await self._lifecycle.run(body, purpose, self._options.wait_seconds(purpose), approve)

    async def close(self) -> None:
        """Finish the pending deletes (bounded), so a clean shutdown leaves nothing behind."""
        await self._lifecycle.close()

    def _verified_chain(
        self, issued: Issued, purpose: str, roots: tuple[x509.Certificate, ...] | None = None
    ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """The issued leaf and intermediates, verified to lead to ``roots`` (default: the active bundle)."""
        roots = self._roots.roots if roots is None else roots
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

    async def sign(self, request: SigningRequest) -> SignedChain:
        ref = self._issuer()
        if not self._roots.ready:
            raise BackendUnavailable("NO_ROOTS", "no root bundle loaded yet")
        body = self._certificate_request(
            request.csr_pem.encode("ascii"),
            request.duration_seconds,
            ref,
            request.identities_annotation or ",".join(request.uris),
            workload_usages(request.csr),
            "workload",
        )
        issued = await self._request(body, "workload")
        leaf, intermediates = self._verified_chain(issued, "workload")
        return SignedChain(
            leaf=leaf,
            chain_pems=(certificate_pem(leaf), *(certificate_pem(c) for c in intermediates)),
            roots_pem=self._roots.pem,
        )

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        ref = self._issuer()
        key = await new_serving_key(key_algorithm, key_size)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=True)
            .sign(key, hashes.SHA256())
        )
        body = self._certificate_request(
            csr.public_bytes(serialization.Encoding.PEM),
            duration_seconds,
            ref,
            SERVING_IDENTITY,
            ["server auth", "digital signature", "key encipherment"],
            "serving",
        )
        issued = await self._request(body, "serving")
        candidate: tuple[x509.Certificate, ...] | None = None  # None: verify against the active (pinned) bundle
        if not self._roots.pinned and issued.ca_pem:
            try:
                candidate = parse_roots(issued.ca_pem, what="status.ca of the serving CertificateRequest")
            except ValueError as exc:
                raise IssuerFailed("BAD_CA", f"status.ca of the serving certificate: {exc}") from None
        leaf, intermediates = self._verified_chain(issued, "serving", candidate)
        if leaf.public_key() != key.public_key():
            raise IssuerFailed("ISSUED_KEY_MISMATCH", "the serving certificate is not for the key sent")
        if candidate is not None:  # trust on first use, but only of a CA that verifiably issued this chain
            self._roots.adopt(issued.ca_pem)
        return serving_material(key, leaf, (certificate_pem(c) for c in intermediates))


__all__ = [
    "CertManagerBackend",
    "CertManagerOptions",
    "certificate_request_wait",
    "request_outcome",
    "workload_usages",
]
