"""The Kubernetes CSR API backend (``--signer kubernetes-csr --signer-name NAME``): one certificates.k8s.io/v1
CertificateSigningRequest per allowed CSR, approved by meshsigner (``--approve-certificate-signing-requests``),
resolved by the shared watch (bridge/certificate_request_watch.py), deleted after use.

Per request (bridge/request_lifecycle.py, shared with the cert-manager backend): create (1 write) → approval
subresource (1 write) → the shared watch sees ``status.certificate`` or a Denied/Failed condition (no read) →
delete (1 write), unless ``--preserve-certificate-signing-requests``. The CSR API carries no CA: the chain
(``status.certificate``: leaf and intermediates) must verify to the pinned ``--root-ca-file``.

Lifetimes: ``spec.expirationSeconds`` is the granted lifetime. The API refuses values under 600 s (and cert-manager
fails such requests), and meshsigner never issues longer than granted, so a grant under 600 s is refused before any
object is made (FAILED_PRECONDITION, ``LIFETIME_BELOW_CSR_API_MINIMUM``), and an issued notAfter later than the
grant (plus 5 s of rounding) is refused too (``ISSUED_TOO_LONG``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from bridge.cert_manager import workload_usages
from bridge.certificate_request_watch import (
    LABEL_KEY,
    LABEL_SELECTOR,
    LABEL_VALUE,
    Issued,
    RequestWatch,
    condition_message,
    condition_time,
    conditions,
    decode_base64,
)
from bridge.errors import BackendError, BackendUnavailable, IssuerDenied, IssuerFailed
from bridge.kube import CERTIFICATE_SIGNING_REQUESTS, CSR_GROUP, KubeClient, Obj, WatchSource
from bridge.metrics import BridgeMetrics
from bridge.request_lifecycle import RequestKind, RequestLifecycle, wait_seconds_for
from bridge.root_bundle import RootBundle
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

NAME_PREFIX = "meshsigner-"
PURPOSE_LABEL = "meshsigner.io/purpose"
IDENTITIES_ANNOTATION = "meshsigner.io/identities"
DECISION_ANNOTATION = "meshsigner.io/decision-id"
MIN_EXPIRATION_SECONDS = 600  # the CSR API's minimum for spec.expirationSeconds
NOT_AFTER_TOLERANCE = timedelta(seconds=5)  # signers round to whole seconds
# the watch and the sweep see only this backend's request objects, never the audit mirror's (purpose=audit)
REQUEST_SELECTOR = f"{LABEL_SELECTOR},{PURPOSE_LABEL} in (workload,serving)"


def signer_field_selector(signer_name: str) -> str:
    """Only CSRs of one signer name: replicas or installations with other signer names are not ours to sweep."""
    return f"spec.signerName={signer_name}"


def csr_terminal_state(obj: Obj) -> Issued | BackendError | None:
    """What a CertificateSigningRequest says about its end: ``status.certificate`` (issued), Denied
    (PERMISSION_DENIED), Failed (UNAVAILABLE: a signer outage may pass), or None (pending)."""
    certificate = decode_base64((obj.get("status") or {}).get("certificate"))
    if certificate:
        return Issued(certificate, b"")
    by_type = conditions(obj)
    denied = by_type.get("Denied")
    if denied and denied.get("status") == "True":
        return IssuerDenied("CERTIFICATE_SIGNING_REQUEST_DENIED", condition_message(denied))
    failed = by_type.get("Failed")
    if failed and failed.get("status") == "True":
        return BackendUnavailable("CERTIFICATE_SIGNING_REQUEST_FAILED", condition_message(failed))
    return None


def csr_watch(kube: WatchSource, signer_name: str) -> RequestWatch:
    """The one shared watch over this server's CertificateSigningRequests of ``signer_name``."""
    return RequestWatch(
        kube,
        CERTIFICATE_SIGNING_REQUESTS,
        None,
        csr_terminal_state,
        label_selector=REQUEST_SELECTOR,
        field_selector=signer_field_selector(signer_name),
        deleted_reason="CERTIFICATE_SIGNING_REQUEST_DELETED",
        name="certificatesigningrequests",
    )


@dataclass(frozen=True)
class KubernetesCsrOptions:
    signer_name: str
    approve: bool = True
    preserve: bool = False
    timeout_seconds: float = 30.0  # --certificate-request-timeout
    request_timeout_seconds: float | None = None  # --request-timeout

    def wait_seconds(self, purpose: str) -> float:
        return wait_seconds_for(purpose, self.timeout_seconds, self.request_timeout_seconds)


MAX_CONDITION_MESSAGE = 1000


def csr_condition(kind: str, reason: str, message: str, now: datetime) -> Obj:
    """A CertificateSigningRequest condition (``Approved``, ``Denied``) set at ``now``, its message bounded."""
    stamp = condition_time(now)
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message[:MAX_CONDITION_MESSAGE],
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    }


def approval_condition(name: str, decision_id: str, identities: str, now: datetime) -> Obj:
    decision = f"decision {decision_id}" if decision_id else "its decision"
    message = f"{name} approved by meshsigner: {decision} allowed {identities}"
    return csr_condition("Approved", "MeshsignerPolicyAllowed", message, now)


class KubernetesCsrBackend:
    def __init__(
        self,
        kube: KubeClient,
        options: KubernetesCsrOptions,
        *,
        watch: RequestWatch,
        roots: RootBundle,
        metrics: BridgeMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or kube.clock
        self._kube = kube
        self._options = options
        self._watch = watch
        self._roots = roots
        self._metrics = metrics
        self._lifecycle = RequestLifecycle(
            kube,
            RequestKind(CERTIFICATE_SIGNING_REQUESTS, None, "CERTIFICATE_SIGNING_REQUEST", "CertificateSigningRequest"),
            watch=watch,
            metrics=metrics,
            preserve=options.preserve,
            clock=self._clock,
        )

    @property
    def ready(self) -> bool:
        return self._watch.ready and self._roots.ready

    @property
    def ca_not_after(self) -> datetime | None:
        return None  # the signer's CA is not known here

    def _body(
        self, csr_pem: bytes, seconds: int, usages: list[str], purpose: str, identities: str, decision_id: str
    ) -> Obj:
        return {
            "apiVersion": f"{CSR_GROUP}/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {
                "generateName": NAME_PREFIX,
                "labels": {LABEL_KEY: LABEL_VALUE, PURPOSE_LABEL: purpose},
                "annotations": {IDENTITIES_ANNOTATION: identities, DECISION_ANNOTATION: decision_id},
            },
            "spec": {
                "request": base64.b64encode(csr_pem).decode("ascii"),
                "signerName": self._options.signer_name,
                "usages": usages,
                "expirationSeconds": seconds,
            },
        }

    async def _approve(self, created: Obj) -> None:
        name = str(created["metadata"]["name"])
        annotations = created["metadata"].get("annotations") or {}
        condition = approval_condition(
            name,
            str(annotations.get(DECISION_ANNOTATION) or ""),
            str(annotations.get(IDENTITIES_ANNOTATION) or ""),
            self._clock.now(),
        )
        await self._lifecycle.approve(
            created, condition, decided=("Denied", "Failed"), write=self._kube.update_approval
        )

    async def _issue(
        self, body: Obj, purpose: str, seconds: int
    ) -> tuple[x509.Certificate, list[x509.Certificate], str]:
        """The verified leaf and intermediates, and the name of the CertificateSigningRequest that got them."""
        if seconds < MIN_EXPIRATION_SECONDS:
            raise IssuerFailed(
                "LIFETIME_BELOW_CSR_API_MINIMUM",
                f"granted lifetime {seconds}s is under the Kubernetes CSR API's minimum of {MIN_EXPIRATION_SECONDS}s; "
                "meshsigner never issues longer than granted",
            )
        if not self._watch.ready:
            raise BackendUnavailable("WATCH_NOT_SYNCED", "the CertificateSigningRequest watch has not listed yet")
        if not self._roots.ready:
            raise BackendUnavailable("NO_ROOTS", "no root bundle loaded yet")
        approve = self._approve if self._options.approve else None
        answered = await self._lifecycle.run(body, purpose, self._options.wait_seconds(purpose), approve)
        leaf, intermediates = self._lifecycle.verified_chain(answered.issued, purpose, self._roots.roots)
        latest = self._clock.now() + timedelta(seconds=seconds) + NOT_AFTER_TOLERANCE
        if leaf.not_valid_after_utc > latest:
            self._metrics.outcomes.labels(purpose, "too_long").inc()
            raise IssuerFailed(
                "ISSUED_TOO_LONG",
                f"notAfter {leaf.not_valid_after_utc.isoformat()} is past the granted {latest.isoformat()}",
            )
        return leaf, intermediates, answered.name

    async def sign(self, request: SigningRequest) -> SignedChain:
        body = self._body(
            request.csr_pem.encode("ascii"),
            request.duration_seconds,
            workload_usages(request.csr),
            "workload",
            request.identities_annotation or ",".join(request.uris),
            request.decision_id,
        )
        leaf, intermediates, name = await self._issue(body, "workload", request.duration_seconds)
        return issued_chain(leaf, intermediates, self._roots.pem, name)

    async def issue_serving_certificate(
        self, dns_names: tuple[str, ...], duration_seconds: float, key_algorithm: str, key_size: int
    ) -> ServingMaterial:
        key = await new_serving_key(key_algorithm, key_size)
        seconds = max(MIN_EXPIRATION_SECONDS, int(duration_seconds))
        body = self._body(
            serving_csr_pem(key, dns_names),
            seconds,
            ["server auth", "digital signature", "key encipherment"],
            "serving",
            ",".join(dns_names),
            "",  # no workload decision: the server's own certificate
        )
        leaf, intermediates, _ = await self._issue(body, "serving", seconds)
        return issued_serving_material(key, leaf, intermediates)

    async def close(self) -> None:
        await self._lifecycle.close()


# --- start-up permission check ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    subresource: str = ""
    name: str = ""

    def rule(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        names = f', resourceNames: ["{self.name}"]' if self.name else ""
        return f'{{apiGroups: ["{CSR_GROUP}"], resources: ["{resource}"]{names}, verbs: ["{self.verb}"]}}'

    def describe(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {resource}{'/' + self.name if self.name else ''} ({CSR_GROUP})"


def needed_permissions(signer_name: str, *, approve: bool, delete: bool, sign: bool = False) -> list[Permission]:
    """What meshsigner needs for CSRs of ``signer_name``: create, list and watch (the shared watch), delete (after
    use and the sweep); with approval, update on the approval subresource and ``approve`` on the signer name; to
    write certificates (the audit mirror), update on the status subresource and ``sign`` on the signer name."""
    needed = [Permission(verb, "certificatesigningrequests") for verb in ("create", "list", "watch")]
    if delete:
        needed.append(Permission("delete", "certificatesigningrequests"))
    if approve:
        needed += [
            Permission("update", "certificatesigningrequests", "approval"),
            Permission("approve", "signers", name=signer_name),
        ]
    if sign:
        needed += [
            Permission("update", "certificatesigningrequests", "status"),
            Permission("sign", "signers", name=signer_name),
        ]
    return needed


async def missing_permissions(kube: KubeClient, needed: list[Permission]) -> list[str]:
    """One line per permission the API server's SelfSubjectAccessReview refuses: what is missing and the RBAC rule
    (of a ClusterRole bound to meshsigner's service account) that grants it."""
    missing = []
    for permission in needed:
        review = await kube.may(
            permission.verb,
            CSR_GROUP,
            permission.resource,
            name=permission.name,
            subresource=permission.subresource,
        )
        if not review.allowed:
            missing.append(
                f"missing permission: {permission.describe()}; grant it with the ClusterRole rule {permission.rule()}"
            )
    return missing


__all__ = [
    "KubernetesCsrBackend",
    "KubernetesCsrOptions",
    "Permission",
    "csr_terminal_state",
    "csr_watch",
    "missing_permissions",
    "needed_permissions",
]
