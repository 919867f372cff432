"""The CreateCertificate handler: authenticate → parse the CSR → decide → sign → check → answer.

Each refusal is a typed exception mapped to a status code in ``signer/status.py``; the client gets the short
reason code, the log gets the detail (never the token).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from cryptography import x509
from loguru import logger

from bridge.errors import BackendError
from bridge.signing import SignedChain, SigningBackend, SigningRequest
from clocks import Clock
from policies import Caller, Decision, IdentityDecider, Outcome
from policies.spiffe import InvalidSpiffeID, parse_spiffe_id
from proto import istio_ca_pb2, istio_ca_pb2_grpc
from signer.auth.base import Authenticator, WorkloadIdentity, bearer_token, check_cluster_id
from signer.auth.client_cert import ClientCertAuthenticator, peer_chain_from_auth_context
from signer.auth.refusal_limit import calling_peer
from signer.csr_checks import ParsedCsr, parse_csr
from signer.decided_request import DecidedRequest, DecisionRecorder
from signer.draining import CallDrain
from signer.errors import (
    AuthenticationFailed,
    CsrRejected,
    NotPermitted,
    Overloaded,
    RequestRejected,
    TemporarilyUnavailable,
)
from signer.issued_checks import check_issued
from signer.logs import RateLimiter
from signer.metrics import ServerMetrics
from signer.request_checks import admitted_request
from signer.status import status_for

ADMISSION_WAIT_SECONDS = 1.0
_OUTCOME_ERRORS: dict[Outcome, type[RequestRejected]] = {
    Outcome.UNAUTHENTICATED: AuthenticationFailed,
    Outcome.PERMISSION_DENIED: NotPermitted,
    Outcome.INVALID_ARGUMENT: CsrRejected,
    Outcome.UNAVAILABLE: TemporarilyUnavailable,
}


class NodeAuthorizer(Protocol):
    """Confirms that a node proxy's pod runs on a node hosting a pod of the impersonated service account."""

    async def authorize(self, node: WorkloadIdentity, namespace: str, service_account: str) -> None: ...


class PeerChains(Protocol):
    """The client certificate chain that arrived on a call's connection (signer/client_cert_front.py)."""

    def peer_chain(self, peer: str) -> Sequence[x509.Certificate]: ...

    def remote_peer(self, peer: str) -> str: ...


@dataclass(frozen=True)
class ClientCertAuthentication:
    """``--enable-client-cert-authenticator``: who verifies presented certificates and where they are found."""

    authenticator: ClientCertAuthenticator
    peers: PeerChains


Context = grpc.aio.ServicerContext[istio_ca_pb2.IstioCertificateRequest, istio_ca_pb2.IstioCertificateResponse]


@dataclass(frozen=True)
class ServiceConfig:
    trust_domain: str
    cluster_id: str
    trusted_node_accounts: frozenset[str]
    request_timeout_seconds: float
    max_in_flight: int
    backend_name: str


def _metadata_string(request: istio_ca_pb2.IstioCertificateRequest, key: str) -> str | None:
    if not request.HasField("metadata"):
        return None
    value = request.metadata.fields.get(key)
    if value is None:
        return None
    if value.WhichOneof("kind") != "string_value":
        raise CsrRejected("METADATA_MALFORMED", f"metadata {key} must be a string")
    return value.string_value or None


class _InFlightSlot:
    """One of ``--max-in-flight`` places, around each call (``async with``); a full house waits at most
    ADMISSION_WAIT_SECONDS, then the call is refused with RESOURCE_EXHAUSTED. A class: it runs on every call."""

    __slots__ = ("_in_flight", "_limit", "_slots")

    def __init__(self, limit: int, metrics: ServerMetrics) -> None:
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._in_flight = metrics.in_flight

    async def __aenter__(self) -> None:
        if self._slots.locked():  # only a full house pays for a timed wait
            try:
                await asyncio.wait_for(self._slots.acquire(), ADMISSION_WAIT_SECONDS)
            except TimeoutError:
                raise Overloaded("TOO_MANY_IN_FLIGHT", f"more than {self._limit} calls in flight") from None
        else:
            await self._slots.acquire()
        self._in_flight.inc()

    async def __aexit__(self, *_: object) -> None:
        self._in_flight.dec()
        self._slots.release()


class CertificateService(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        config: ServiceConfig,
        *,
        authenticator: Authenticator,
        decider: IdentityDecider,
        backend: SigningBackend,
        metrics: ServerMetrics,
        record_decision: DecisionRecorder | None = None,
        node_authorizer: NodeAuthorizer | None = None,
        client_certs: ClientCertAuthentication | None = None,
        clock: Clock,
    ) -> None:
        self._config = config
        self._authenticator = authenticator
        self._decider = decider
        self._backend = backend
        self._metrics = metrics
        self._record_decision = record_decision
        self._node_authorizer = node_authorizer
        self._client_certs = client_certs
        self._clock = clock  # the time decisions are made at (certificate validity)
        self._slot = _InFlightSlot(config.max_in_flight, metrics)
        self.calls = CallDrain(clock)  # serve drains it on SIGTERM before gRPC stops
        # labelled children looked up once: the success path runs thousands of times a second
        self._issued = metrics.requests.labels(code="OK", reason="ISSUED")
        self._backend_seconds = metrics.backend_seconds.labels(backend=config.backend_name)
        self._log_limit = RateLimiter()

    async def CreateCertificate(  # the gRPC method name
        self, request: istio_ca_pb2.IstioCertificateRequest, context: Context
    ) -> istio_ca_pb2.IstioCertificateResponse:
        request_id = os.urandom(8).hex()
        # every log line written while serving this call (here, in the authenticators, the backends) carries its id
        with logger.contextualize(request_id=request_id), calling_peer(self._caller_address(context)):
            return await self._serve(request, context, request_id)

    async def _serve(
        self, request: istio_ca_pb2.IstioCertificateRequest, context: Context, request_id: str
    ) -> istio_ca_pb2.IstioCertificateResponse:
        started = time.perf_counter()
        try:
            with self.calls.accept():
                async with self._slot, asyncio.timeout(self._config.request_timeout_seconds):
                    peer_chain = self._peer_chain(context)
                    metadata = tuple(context.invocation_metadata() or ())
                    chain = await self._issue(request, metadata, request_id, peer_chain)
        except (RequestRejected, BackendError, TimeoutError) as error:
            code, reason = self._refusal(error)
            message = getattr(error, "client_message", None) or reason
        except Exception:
            allowed, suppressed = self._log_limit.allow("INTERNAL")  # a bug hit by a retrying fleet: still cheap
            if allowed:
                logger.bind(event="csr_internal_error", suppressed=suppressed).exception("unexpected failure")
            code, reason = grpc.StatusCode.INTERNAL, "INTERNAL"
            message = reason
        else:
            self._issued.inc()
            self._metrics.request_seconds.observe(time.perf_counter() - started)
            return istio_ca_pb2.IstioCertificateResponse(cert_chain=chain)
        self._metrics.requests.labels(code=code.name, reason=reason).inc()
        self._metrics.request_seconds.observe(time.perf_counter() - started)
        await context.abort(code, f"{message} (request {request_id})")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _refusal(self, error: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, TimeoutError):
            code, reason, detail = grpc.StatusCode.UNAVAILABLE, "DEADLINE_EXCEEDED", "server-side request timeout"
        else:
            code = status_for(error)
            reason, detail = getattr(error, "reason", "UNKNOWN"), getattr(error, "detail", "")
        allowed, suppressed = self._log_limit.allow(reason)
        if allowed:
            logger.bind(event="csr_refused", code=code.name, reason=reason, suppressed=suppressed).warning(
                "refused: {}", detail
            )
        return code, reason

    async def _issue(
        self,
        request: istio_ca_pb2.IstioCertificateRequest,
        metadata: Sequence[tuple[str, str | bytes]],
        request_id: str,
        peer_chain: Sequence[x509.Certificate] = (),
    ) -> list[str]:
        request = admitted_request(request)  # undecodable or over-sized metadata: INVALID_ARGUMENT
        workload, by_certificate = await self._authenticate(metadata, peer_chain)
        impersonated = _metadata_string(request, "ImpersonatedIdentity")
        if by_certificate and impersonated is not None:
            # istiod checks a node proxy through its token's pod; a certificate names no pod
            raise NotPermitted("IMPERSONATION_NEEDS_TOKEN", "impersonation by a client-certificate caller")
        parsed = parse_csr(
            request.csr,
            validity_seconds=request.validity_duration,
            impersonated=impersonated,
            cert_signer=_metadata_string(request, "CertSigner"),
        )
        caller = await self._caller(workload, impersonated)
        now = self._clock.now()
        decision = self._decider.decide(caller, parsed.request, now=now, ca_not_after=self._backend.ca_not_after)
        if not decision.allowed:
            self._record(request_id, caller, parsed, decision)
            client_message = decision.details.get("clientMessage")
            raise _OUTCOME_ERRORS.get(decision.outcome, NotPermitted)(
                decision.reason, decision.message, client_message=str(client_message) if client_message else None
            )
        assert decision.not_after is not None and decision.duration_seconds is not None
        signing_request = SigningRequest(
            csr_pem=parsed.pem,
            csr=parsed.csr,
            public_key=parsed.public_key,
            uris=decision.uris,
            dns_names=decision.dns_names,
            not_after=decision.not_after,
            duration_seconds=decision.duration_seconds,
            identities_annotation=",".join(decision.uris),
            decision_id=request_id,  # the API object a backend creates is annotated with it
        )
        backend_started = time.perf_counter()
        signed = await self._backend.sign(signing_request)
        self._backend_seconds.observe(time.perf_counter() - backend_started)
        if not signed.built_in_process:
            check_issued(signed.leaf, parsed.public_key, decision)
        issued_not_after = signed.leaf.not_valid_after_utc
        self._metrics.issued_duration.observe((issued_not_after - now).total_seconds())
        self._record(request_id, caller, parsed, decision, signed)
        return [*signed.chain_pems, signed.roots_pem]

    def _caller_address(self, context: Context) -> str:
        """The caller's own address, also when its connection was piped through the client-certificate front."""
        peer = context.peer()
        return self._client_certs.peers.remote_peer(peer) if self._client_certs is not None else peer

    def _peer_chain(self, context: Context) -> Sequence[x509.Certificate]:
        """The client certificate chain of this call's connection; empty when none or the authenticator is off."""
        if self._client_certs is None:
            return ()
        chain = self._client_certs.peers.peer_chain(context.peer())
        if chain:
            return chain
        # a listener that made gRPC itself verify client certificates (none today: see client_cert_front.py)
        return peer_chain_from_auth_context(context.auth_context() or {})

    async def _authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], peer_chain: Sequence[x509.Certificate]
    ) -> tuple[WorkloadIdentity, bool]:
        """istiod's order, first success wins: the client certificate (when the authenticator is on and one was
        presented), then the bearer token. A valid certificate decides alone (a token beside it is not looked
        at, and ``clusterid``, which only chooses where tokens are checked, does not apply). A certificate that
        does not qualify falls through to the token when there is one (istiod does the same), else is refused.
        Returns the identity and whether it came from the certificate."""
        if self._client_certs is not None and peer_chain:
            try:
                return self._client_certs.authenticator.authenticate(peer_chain), True
            except AuthenticationFailed as refused:
                if not any(key == "authorization" for key, _ in metadata):
                    raise
                logger.bind(event="client_cert_refused", reason=refused.reason).info(
                    "client certificate not accepted ({}); authenticating by token", refused.detail
                )
        check_cluster_id(metadata, self._config.cluster_id)
        return await self._authenticator.authenticate(bearer_token(metadata)), False

    async def _caller(self, workload: WorkloadIdentity, impersonated: str | None) -> Caller:
        td = self._config.trust_domain
        if impersonated is None:
            return Caller(td, workload.namespace, workload.service_account, workload.pod_name, workload.pod_uid)
        if workload.principal not in self._config.trusted_node_accounts:
            raise NotPermitted("IMPERSONATION_NOT_ALLOWED", f"{workload.principal} is not a trusted node account")
        try:
            target = parse_spiffe_id(impersonated)
        except InvalidSpiffeID as exc:
            raise CsrRejected("IMPERSONATED_IDENTITY_MALFORMED", str(exc)) from None
        if target.workload is None:
            raise CsrRejected("IMPERSONATED_IDENTITY_MALFORMED", "not spiffe://<td>/ns/<ns>/sa/<sa>")
        if target.trust_domain != td:
            raise NotPermitted(
                "IMPERSONATION_FOREIGN_TRUST_DOMAIN", f"trust domain {target.trust_domain!r} is not ours"
            )
        if self._node_authorizer is None:
            raise NotPermitted(
                "IMPERSONATION_NO_NODE_AUTHORIZER", "node authorization needs the in-cluster pod informer"
            )
        namespace, service_account = target.workload
        await self._node_authorizer.authorize(workload, namespace, service_account)
        return Caller(td, namespace, service_account, node_principal=workload.principal)

    def _record(
        self,
        request_id: str,
        caller: Caller,
        parsed: ParsedCsr,
        decision: Decision,
        signed: SignedChain | None = None,
    ) -> None:
        if self._record_decision is not None:
            self._record_decision(DecidedRequest(request_id, caller, parsed.request, decision, parsed.pem, signed))


__all__ = [
    "CertificateService",
    "ClientCertAuthentication",
    "NodeAuthorizer",
    "PeerChains",
    "ServiceConfig",
]
