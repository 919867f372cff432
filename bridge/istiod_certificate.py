"""istiod's serving certificate (``--istiod-cert-enabled``), kept in the Secret ``istiod-tls`` that istiod mounts.

- With cert-manager: a ``cert-manager.io/v1`` Certificate (istio-csr's dynamic mode) whose ``secretName`` is
  ``istiod-tls``; cert-manager issues and renews it. Its spec is put back when edited, the Certificate recreated
  when deleted, and its ``issuerRef`` follows the active (static or runtime) issuer. Annotations are set at
  creation only, as istio-csr does.
- With the local CA or the Kubernetes CSR API: the Secret itself (``tls.crt`` chain, ``tls.key``, ``ca.crt``
  roots), signed through the backend's ``sign`` (a CertificateSigningRequest carrying istiod's SANs, approved by
  meshsigner, its chain verified to the pinned roots, its leaf checked for istiod's key and SANs), re-issued at 2/3
  of the certificate's life, or at once when deleted, edited, issued for other names, or not leading to the roots
  the backend uses now (the local CA's; the pinned ``--root-ca-file`` bundle, also when that file changes).

Names: ``istiod.<ns>.svc`` for the default revision and ``istiod-<rev>.<ns>.svc`` for each other one (istio-csr's
``--istiod-cert-istio-revisions``), then the additional DNS names, duplicates dropped; common name
``istiod.<ns>.svc``; URI ``spiffe://<trust domain>/ns/<ns>/sa/istiod-service-account``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from loguru import logger

from bridge.certificates import load_bundle
from bridge.controllers import Controller, ControllerMetrics, follow_roots
from bridge.errors import BackendError
from bridge.issued_identity import check_issued_identity
from bridge.kube import CERTIFICATES, CM_GROUP, SECRETS, Obj
from bridge.object_keeper import KeeperApi, ObjectKeeper
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from bridge.signing import PrivateKey, SignedChain, SigningRequest, new_serving_key
from clocks import Clock
from clocks.durations import format_duration

SECRET_NAME = "istiod-tls"
CONTROLLER_CERTIFICATE = "istiod-certificate"
CONTROLLER_SECRET = "istiod-secret"
RENEW_AT_FRACTION = 2 / 3
RETRY_START, RETRY_MAX = 1.0, 30.0  # seconds between attempts after a failed issuance


@dataclass(frozen=True)
class IstiodCertOptions:
    name: str = "istiod-dynamic"
    namespace: str = "istio-system"
    trust_domain: str = "cluster.local"
    duration_seconds: float = 3600.0
    renew_before_seconds: float = 1800.0
    key_algorithm: str = "RSA"
    key_size: int = 2048
    additional_dns_names: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    revisions: tuple[str, ...] = ()

    @property
    def common_name(self) -> str:
        return f"istiod.{self.namespace}.svc"

    @property
    def dns_names(self) -> tuple[str, ...]:
        """Per revision (none given: the default one), then the additional names; first occurrence kept."""
        names = [
            self.common_name if revision == "default" else f"istiod-{revision}.{self.namespace}.svc"
            for revision in (self.revisions or ("default",))
        ]
        return tuple(dict.fromkeys([*names, *self.additional_dns_names]))

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/istiod-service-account"


# --- cert-manager ----------------------------------------------------------------------------------------------
def certificate_spec(options: IstiodCertOptions, issuer: IssuerRef) -> Obj:
    return {
        "commonName": options.common_name,
        "dnsNames": list(options.dns_names),
        "uris": [options.uri],
        "secretName": SECRET_NAME,
        "duration": format_duration(options.duration_seconds),
        "renewBefore": format_duration(options.renew_before_seconds),
        "privateKey": {
            "rotationPolicy": "Always",
            "algorithm": options.key_algorithm,
            "size": options.key_size,
        },
        "revisionHistoryLimit": 1,
        "issuerRef": issuer.as_dict(),
    }


def desired_certificate(options: IstiodCertOptions, issuer: IssuerRef | None, current: Obj | None) -> Obj | None:
    """What to write: the whole Certificate when absent, the spec put back when it differs, None otherwise (and
    None while there is no issuer: nothing to ask for)."""
    if issuer is None:
        return None
    spec = certificate_spec(options, issuer)
    if current is None:
        metadata: Obj = {"name": options.name, "namespace": options.namespace}
        if options.annotations:
            metadata["annotations"] = dict(options.annotations)
        return {"apiVersion": f"{CM_GROUP}/v1", "kind": "Certificate", "metadata": metadata, "spec": spec}
    if current.get("spec") == spec:
        return None
    body = copy.deepcopy(current)
    body["spec"] = spec
    return body


def certificate_keeper(
    api: KeeperApi, options: IstiodCertOptions, issuers: IssuerSelector, *, metrics: ControllerMetrics, clock: Clock
) -> ObjectKeeper:
    """The Certificate kept in place, following the active issuer (a runtime issuer change is a pass at once)."""

    async def decide(current: Obj | None) -> Obj | None:
        return desired_certificate(options, issuers.current, current)

    keeper = ObjectKeeper(
        api, CERTIFICATES, options.namespace, options.name, decide,
        controller=CONTROLLER_CERTIFICATE, metrics=metrics, clock=clock,
    )  # fmt: skip
    issuers.subscribe(lambda _issuer: keeper.trigger())
    return keeper


# --- local CA or Kubernetes CSR API: the Secret itself --------------------------------------------------------
def _secret_bytes(secret: Obj, key: str) -> bytes:
    value = (secret.get("data") or {}).get(key) or ""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def istiod_csr(key: PrivateKey, options: IstiodCertOptions) -> x509.CertificateSigningRequest:
    """The CSR for istiod's key, carrying its SANs: a CSR API signer (cert-manager's) issues what the CSR asks
    for. The subject is empty, as in Istio's own CSRs, so the SAN extension is critical (RFC 5280)."""
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in options.dns_names]
    sans.append(x509.UniformResourceIdentifier(options.uri))
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(key, hashes.SHA256())
    )


class Signer(Protocol):
    """What istiod's Secret needs of a backend (:class:`bridge.signing.SigningBackend` has it): its signing."""

    async def sign(self, request: SigningRequest) -> SignedChain: ...


class IstiodSecretIssuer:
    """Decides, for :class:`bridge.object_keeper.ObjectKeeper`, whether ``istiod-tls`` needs a new certificate,
    and gets one from ``backend`` (the local CA, or the Kubernetes CSR API backend).

    ``roots`` gives the roots the backend's chains lead to now (the local CA's; the pinned ``--root-ca-file``
    bundle): a Secret whose ``ca.crt`` is other roots is replaced. A failed issuance (the signer is down, the
    answer is refused) keeps the Secret as it is and is retried with a backoff.
    """

    def __init__(self, backend: Signer, roots: Callable[[], str], options: IstiodCertOptions, clock: Clock) -> None:
        self._backend = backend
        self._roots = roots
        self._options = options
        self._clock = clock
        self._retry = RETRY_START
        self.renew_in: float | None = None  # seconds until the next look (renewal or retry), for the keeper's timer

    def _seconds_until_renewal(self, secret: Obj) -> float | None:
        """Seconds until the Secret's certificate is due for renewal; None when it must be replaced now."""
        if _secret_bytes(secret, "ca.crt").decode(errors="replace") != self._roots():
            return None
        if not _secret_bytes(secret, "tls.key"):
            return None
        try:
            leaf = load_bundle(_secret_bytes(secret, "tls.crt"), what="istiod-tls tls.crt")[0]
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            return None
        names = set(sans.get_values_for_type(x509.DNSName))
        uris = set(sans.get_values_for_type(x509.UniformResourceIdentifier))
        if (names, uris) != (set(self._options.dns_names), {self._options.uri}):
            return None
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        renew_at = start + (end - start) * RENEW_AT_FRACTION
        remaining = (renew_at - self._clock.now()).total_seconds()
        return remaining if remaining > 0 else None

    async def decide(self, current: Obj | None) -> Obj | None:
        if current is not None:
            remaining = self._seconds_until_renewal(current)
            if remaining is not None:
                self.renew_in = remaining
                return None
        try:
            data = await self._issue()
        except BackendError as exc:
            self.renew_in, self._retry = self._retry, min(self._retry * 2, RETRY_MAX)
            logger.bind(event="istiod_certificate_failed", reason=exc.reason).warning(
                "istiod certificate not issued ({}); {} kept as it is, retrying in {:.0f}s",
                exc,
                SECRET_NAME,
                self.renew_in,
            )
            return None
        self._retry = RETRY_START
        self.renew_in = self._options.duration_seconds * RENEW_AT_FRACTION
        if current is None:
            return {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": SECRET_NAME, "namespace": self._options.namespace},
                "data": data,
            }
        body = copy.deepcopy(current)
        body["data"] = data
        return body

    async def _issue(self) -> dict[str, str]:
        key = await new_serving_key(self._options.key_algorithm, self._options.key_size)
        csr = istiod_csr(key, self._options)
        now = self._clock.now()
        chain = await self._backend.sign(
            SigningRequest(
                csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                csr=csr,
                public_key=key.public_key(),
                uris=(self._options.uri,),
                dns_names=self._options.dns_names,
                not_after=now + timedelta(seconds=self._options.duration_seconds),
                duration_seconds=int(self._options.duration_seconds),
                identities_annotation=",".join((self._options.uri, *self._options.dns_names)),
            )
        )
        if not chain.built_in_process:
            check_issued_identity(chain.leaf, key.public_key(), (self._options.uri,), self._options.dns_names)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

        def encoded(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        return {
            "tls.crt": encoded("".join(chain.chain_pems).encode("ascii")),
            "tls.key": encoded(key_pem),
            "ca.crt": encoded(chain.roots_pem.encode("ascii")),
        }


def secret_keeper(
    api: KeeperApi,
    backend: Signer,
    roots: Callable[[], str],
    options: IstiodCertOptions,
    *,
    metrics: ControllerMetrics,
    clock: Clock,
) -> Controller:
    """The Secret kept in place and re-issued when due (the keeper's next pass is the certificate's renewal, or
    the retry of a failed issuance), and at once when ``roots`` change (a new pinned bundle)."""
    issuer = IstiodSecretIssuer(backend, roots, options, clock)

    async def decide(current: Obj | None) -> Obj | None:
        body = await issuer.decide(current)
        keeper.next_pass = issuer.renew_in
        return body

    keeper = ObjectKeeper(
        api, SECRETS, options.namespace, SECRET_NAME, decide,
        controller=CONTROLLER_SECRET, metrics=metrics, clock=clock,
    )  # fmt: skip

    async def run(stop: asyncio.Event) -> None:
        follower = asyncio.create_task(
            follow_roots(roots, roots(), lambda _roots: keeper.trigger(), stop, clock), name="istiod-secret-roots"
        )
        try:
            await keeper.run(stop)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    return run
