"""Renewal by mesh client certificate: istio-csr's ``--enable-client-cert-authenticator``, istiod's
ClientCertAuthenticator.

A workload that already holds a mesh certificate may present it as its TLS client certificate and renew that
identity without a token. The caller's identity is the certificate's one SPIFFE URI SAN; the CSR must then ask for
exactly that identity (the decider checks it, as for a token caller).

The TLS layer that received the certificate verified it already (signer/client_cert_front.py), but this module does
not rely on that: it verifies the presented chain again, with ``cryptography.x509.verification`` against the roots
pinned *now* (``--root-ca-file``, or the local CA's roots), at the injected clock's time, as a client certificate
(extended key usage clientAuth), with the peer's intermediates as untrusted helpers. Then it demands exactly one URI
SAN, a ``spiffe://<our trust domain>/ns/<ns>/sa/<sa>`` one. Any doubt is a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from clocks import Clock
from policies.spiffe import InvalidSpiffeID, parse_spiffe_id
from signer.auth.base import WorkloadIdentity
from signer.errors import AuthenticationFailed

MAX_PEER_CHAIN = 5  # leaf + intermediates a workload may present; the mesh CAs are at most a few levels deep
MAX_CHAIN_DEPTH = 4  # intermediates between leaf and root that verification follows


class ClientCertAuthenticator:
    """Turns a verified mesh client certificate into the workload identity it names."""

    def __init__(self, roots: Callable[[], Sequence[x509.Certificate]], *, trust_domain: str, clock: Clock) -> None:
        """``roots`` is asked at every call, so a root rotation (pinned file replaced) applies at once."""
        self._roots = roots
        self._trust_domain = trust_domain
        self._clock = clock

    @property
    def ready(self) -> bool:
        return bool(self._roots())

    def authenticate(self, peer_chain: Sequence[x509.Certificate]) -> WorkloadIdentity:
        """The identity of ``peer_chain`` (leaf first, then the intermediates the peer sent).

        Raises:
            AuthenticationFailed: the chain does not verify against the pinned roots now, is not for client
                authentication, or does not name exactly one workload SPIFFE ID of our trust domain.
        """
        if not peer_chain:
            raise AuthenticationFailed("NO_CLIENT_CERTIFICATE", "no client certificate presented")
        if len(peer_chain) > MAX_PEER_CHAIN:
            raise AuthenticationFailed("CLIENT_CERT_CHAIN_TOO_LONG", f"{len(peer_chain)} certificates presented")
        roots = list(self._roots())
        if not roots:
            raise AuthenticationFailed("CLIENT_CERT_NO_ROOTS", "no mesh roots to verify client certificates against")
        leaf, intermediates = peer_chain[0], list(peer_chain[1:])
        verifier = (
            PolicyBuilder()
            .store(Store(roots))
            .time(self._clock.now())
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)  # also checks validity dates and EKU clientAuth
        except VerificationError as exc:
            raise AuthenticationFailed("CLIENT_CERT_INVALID", f"client certificate does not verify: {exc}") from None
        return self._identity(leaf)

    def _identity(self, leaf: x509.Certificate) -> WorkloadIdentity:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise AuthenticationFailed("CLIENT_CERT_NO_SPIFFE_ID", "client certificate has no SAN") from None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise AuthenticationFailed("CLIENT_CERT_NOT_ONE_URI", f"client certificate has {len(uris)} URI SANs")
        try:
            spiffe_id = parse_spiffe_id(uris[0])
        except InvalidSpiffeID as exc:
            raise AuthenticationFailed("CLIENT_CERT_NO_SPIFFE_ID", f"{uris[0]!r:.200}: {exc}") from None
        if spiffe_id.trust_domain != self._trust_domain:
            raise AuthenticationFailed(
                "CLIENT_CERT_FOREIGN_TRUST_DOMAIN", f"trust domain {spiffe_id.trust_domain!r:.100} is not ours"
            )
        if spiffe_id.workload is None:
            raise AuthenticationFailed("CLIENT_CERT_NO_SPIFFE_ID", f"{uris[0]!r:.200} is not spiffe://<td>/ns/*/sa/*")
        namespace, service_account = spiffe_id.workload
        return WorkloadIdentity(namespace, service_account)


def load_peer_chain(pems: Sequence[bytes]) -> list[x509.Certificate]:
    """Parse PEM blocks (one certificate each, or bundles) into certificates; unparsable input is refused."""
    certificates: list[x509.Certificate] = []
    for pem in pems:
        try:
            certificates.extend(x509.load_pem_x509_certificates(pem))
        except ValueError:
            raise AuthenticationFailed("CLIENT_CERT_MALFORMED", "client certificate chain is not PEM") from None
    return certificates


def peer_chain_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> list[x509.Certificate]:
    """The client chain gRPC itself verified, when its listener required one (``x509_pem_cert_chain``, else the
    leaf alone from ``x509_pem_cert``); empty when the transport carried no client certificate."""
    pems = auth_context.get("x509_pem_cert_chain") or auth_context.get("x509_pem_cert") or ()
    return load_peer_chain(list(pems))
