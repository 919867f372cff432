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
from cryptography.x509.oid import ExtendedKeyUsageOID

from bridge.certificate_request_watch import LABEL_KEY, LABEL_VALUE, CertificateRequestWatch, condition_time
from bridge.errors import BackendUnavailable, IssuerFailed
from bridge.issuer_check import IssuerCheck
from bridge.kube import CERTIFICATE_REQUESTS, KubeClient, Obj
from bridge.metrics import BridgeMetrics
from bridge.request_lifecycle import (
    Answered,
    RequestKind,
    RequestLifecycle,
    certificate_request_wait,
    request_outcome,
    wait_seconds_for,
)
from bridge.root_bundle import RootBundle, parse_roots
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from bridge.signing import (
    ServingMaterial,
    SignedChain,
    SigningRequest,
    issued_chain,
    issued_serving_material,
    new_serving_key,
    serving_csr_pem,
)
from clocks import Clock
from clocks.durations import format_duration

IDENTITIES_ANNOTATION = "istio.cert-manager.io/identities"
SERVING_IDENTITY = "istio-csr-serving"
PURPOSE_LABEL = "meshsigner.io/purpose"
NAME_PREFIX = "meshsigner-"


@dataclass(frozen=True)
class CertManagerOptions:
    namespace: str = "istio-system"
    annotations: tuple[tuple[str, str], ...] = ()
    preserve: bool = False
    approve: bool = False
    timeout_seconds: float = 30.0  # --certificate-request-timeout
    request_timeout_seconds: float | None = None  # --request-timeout, the RPC's own bound (workload requests)

    def wait_seconds(self, purpose: str) -> float:
        """How long a CertificateRequest may wait for its terminal state; see :func:`wait_seconds_for`."""
        return wait_seconds_for(purpose, self.timeout_seconds, self.request_timeout_seconds)


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
        self._lifecycle = RequestLifecycle(
            kube,
            RequestKind(CERTIFICATE_REQUESTS, options.namespace, "CERTIFICATE_REQUEST", "CertificateRequest"),
            watch=watch,
            metrics=metrics,
            preserve=options.preserve,
            clock=self._clock,
        )

    @property
    def ready(self) -> bool:
        return self._issuers.ready and self._issuer_check.ready and self._watch.ready and self._roots.ready

    @property
    def ca_not_after(self) -> datetime | None:
        return None  # the issuer's CA is not known here; cert-manager caps to it

    # --- requests ----------------------------------------------------------------------------------------------
    def _issuer(self, *, watch_synced: bool = True) -> IssuerRef:
        """The active issuer; ``watch_synced``: refuse while the CertificateRequest watch has not listed yet."""
        ref = self._issuers.current
        if ref is None:
            raise BackendUnavailable("NO_ISSUER", "no active issuerRef is configured")
        self._issuer_check.require_usable()
        if watch_synced and not self._watch.ready:
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
                "duration": format_duration(max(1, int(seconds))),  # Go text, as istio-csr writes it (1h0m0s)
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
            "lastTransitionTime": condition_time(self._clock.now()),
        }
        await self._lifecycle.approve(created, condition, decided=("Denied",), write=self._write_status)

    async def _write_status(self, name: str, obj: Obj) -> Obj:
        # managedFields left out: an update without them keeps the server's own (they are most of the object's
        # size, encoded here and decoded there for nothing)
        metadata = {key: value for key, value in obj["metadata"].items() if key != "managedFields"}
        return await self._kube.replace_status(
            CERTIFICATE_REQUESTS, self._options.namespace, name, {**obj, "metadata": metadata}
        )

    async def _request(self, body: Obj, purpose: str) -> Answered:
        approve = self._approve if self._options.approve else None
        return await self._lifecycle.run(body, purpose, self._options.wait_seconds(purpose), approve)

    async def close(self) -> None:
        """Finish the pending deletes (bounded), so a clean shutdown leaves nothing behind."""
        await self._lifecycle.close()

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
        answered = await self._request(body, "workload")
        leaf, intermediates = self._lifecycle.verified_chain(answered.issued, "workload", self._roots.roots)
        return issued_chain(leaf, intermediates, self._roots.pem, answered.name)

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        # At start-up this request runs beside the watch's first list, not after it: a waiter registered before
        # that list is resolved by it (on_relist) or by the events that follow it, so nothing is missed.
        ref = self._issuer(watch_synced=False)
        key = await new_serving_key(key_algorithm, key_size)
        body = self._certificate_request(
            serving_csr_pem(key, dns_names),
            duration_seconds,
            ref,
            SERVING_IDENTITY,
            ["server auth", "digital signature", "key encipherment"],
            "serving",
        )
        issued = (await self._request(body, "serving")).issued
        candidate: tuple[x509.Certificate, ...] | None = None  # None: verify against the active (pinned) bundle
        if not self._roots.pinned and issued.ca_pem:
            try:
                candidate = parse_roots(issued.ca_pem, what="status.ca of the serving CertificateRequest")
            except ValueError as exc:
                raise IssuerFailed("BAD_CA", f"status.ca of the serving certificate: {exc}") from None
        roots = self._roots.roots if candidate is None else candidate
        leaf, intermediates = self._lifecycle.verified_chain(issued, "serving", roots)
        material = issued_serving_material(key, leaf, intermediates)
        if candidate is not None:  # trust on first use, but only of a CA that verifiably issued this chain
            self._roots.adopt(issued.ca_pem)
        return material


__all__ = [
    "CertManagerBackend",
    "CertManagerOptions",
    "certificate_request_wait",
    "request_outcome",
    "workload_usages",
]
