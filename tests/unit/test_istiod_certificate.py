"""istiod's certificate, the pure parts: the names from revisions, the cert-manager Certificate's spec, and the
Secret's issuer (no cluster): renewal at 2/3 of its life on a ManualClock, replacement when the roots in use change,
and, through a backend that issues what the CSR asks for (as a CSR API signer does), istiod's SANs in the CSR and
the refusal of an answer for other names."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from bridge.errors import BackendUnavailable
from bridge.istiod_certificate import (
    IstiodCertOptions,
    IstiodSecretIssuer,
    desired_certificate,
)
from bridge.local_ca import LocalCA
from bridge.runtime_issuer import IssuerRef
from bridge.signing import SignedChain, SigningRequest
from tests.support.clock import ManualClock


def test_revisions_become_names_in_order_without_duplicates() -> None:
    options = IstiodCertOptions(
        namespace="mesh",
        revisions=("default", "canary", "canary"),
        additional_dns_names=("istiod.mesh.svc", "extra.example.org"),
    )
    assert options.dns_names == ("istiod.mesh.svc", "istiod-canary.mesh.svc", "extra.example.org")
    assert IstiodCertOptions(namespace="mesh").dns_names == ("istiod.mesh.svc",)
    assert options.uri == "spiffe://cluster.local/ns/mesh/sa/istiod-service-account"


def test_certificate_spec_is_put_back_and_follows_the_issuer() -> None:
    options = IstiodCertOptions(annotations=(("team", "mesh"),), revisions=("blue",))
    first = IssuerRef("istio-ca")
    created = desired_certificate(options, first, None)
    assert created is not None
    assert created["metadata"]["annotations"] == {"team": "mesh"}
    assert created["spec"]["secretName"] == "istiod-tls"
    assert created["spec"]["dnsNames"] == ["istiod-blue.istio-system.svc"]
    assert created["spec"]["commonName"] == "istiod.istio-system.svc"
    current = {**created, "metadata": {**created["metadata"], "resourceVersion": "5", "annotations": {"x": "y"}}}
    assert desired_certificate(options, first, current) is None  # unchanged: no write
    edited = {**current, "spec": {**current["spec"], "dnsNames": ["evil.example.org"]}}
    restored = desired_certificate(options, first, edited)
    assert restored is not None and restored["spec"] == created["spec"]
    assert restored["metadata"]["annotations"] == {"x": "y"}  # annotations only at creation
    second = desired_certificate(options, IssuerRef("other", "ClusterIssuer"), current)
    assert second is not None and second["spec"]["issuerRef"] == {
        "name": "other",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert desired_certificate(options, None, None) is None  # no issuer: nothing to ask for


def _leaf(secret: dict) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


async def test_local_secret_is_renewed_at_two_thirds_of_its_life(tmp_path: Path) -> None:
    clock = ManualClock()
    ca = LocalCA.open(tmp_path / "ca", clock=clock)
    options = IstiodCertOptions(duration_seconds=3600, key_algorithm="ECDSA", key_size=256, revisions=("default",))
    issuer = IstiodSecretIssuer(ca, lambda: ca.roots_pem, options, clock)
    secret = await issuer.decide(None)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == ca.roots_pem
    leaf = _leaf(secret)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [options.uri]

    assert await issuer.decide(secret) is None  # fresh: kept
    assert issuer.renew_in is not None and 2300 < issuer.renew_in <= 2400 + 120
    await clock.advance(issuer.renew_in - 60)
    assert await issuer.decide(secret) is None  # a minute before 2/3 of its life: still kept
    await clock.advance(61)
    renewed = await issuer.decide(secret)
    assert renewed is not None and _leaf(renewed).serial_number != leaf.serial_number


async def test_local_secret_is_replaced_when_edited_or_for_other_names(tmp_path: Path) -> None:
    clock = ManualClock()
    ca = LocalCA.open(tmp_path / "ca", clock=clock)
    issuer = IstiodSecretIssuer(ca, lambda: ca.roots_pem, IstiodCertOptions(key_algorithm="ECDSA", key_size=256), clock)
    secret = await issuer.decide(None)
    assert secret is not None
    tampered = {**secret, "data": {**secret["data"], "tls.crt": base64.b64encode(b"garbage").decode()}}
    assert await issuer.decide(tampered) is not None
    other_names = IstiodCertOptions(key_algorithm="ECDSA", key_size=256, revisions=("x",))
    other = IstiodSecretIssuer(ca, lambda: ca.roots_pem, other_names, clock)
    assert await other.decide(secret) is not None  # issued for other names: replaced


async def test_secret_is_replaced_when_the_backend_uses_other_roots(tmp_path: Path) -> None:
    clock = ManualClock()
    old_ca, new_ca = LocalCA.open(tmp_path / "old", clock=clock), LocalCA.open(tmp_path / "new", clock=clock)
    options = IstiodCertOptions(key_algorithm="ECDSA", key_size=256)
    roots = old_ca.roots_pem
    issuer = IstiodSecretIssuer(old_ca, lambda: roots, options, clock)
    secret = await issuer.decide(None)
    assert secret is not None and await issuer.decide(secret) is None
    roots = new_ca.roots_pem  # e.g. a new pinned bundle: the Secret's ca.crt is no longer what istiod must trust
    assert await issuer.decide(secret) is not None
    renewed = await IstiodSecretIssuer(new_ca, lambda: roots, options, clock).decide(secret)
    assert renewed is not None and base64.b64decode(renewed["data"]["ca.crt"]).decode() == new_ca.roots_pem


class CsrAskedSigner:
    """Issues what the CSR's SAN extension asks for, not the request's fields (cert-manager's CSR API signer does
    the same); ``tamper`` swaps the names, as a misbehaving signer would. Its answers are not built in process."""

    def __init__(self, ca: LocalCA, tamper: bool = False) -> None:
        self.ca = ca
        self.tamper = tamper

    async def sign(self, request: SigningRequest) -> SignedChain:
        sans = request.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(sans.get_values_for_type(x509.DNSName))
        asked = replace(
            request,
            uris=tuple(sans.get_values_for_type(x509.UniformResourceIdentifier)),
            dns_names=("evil.example.org",) if self.tamper else dns_names,
        )
        return replace(self.ca.sign_now(asked), built_in_process=False)


async def test_csr_carries_istiods_sans_for_a_signer_that_issues_what_is_asked(tmp_path: Path) -> None:
    clock = ManualClock()
    ca = LocalCA.open(tmp_path / "ca", clock=clock)
    options = IstiodCertOptions(namespace="mesh", revisions=("default", "canary"), key_algorithm="ECDSA", key_size=256)
    issuer = IstiodSecretIssuer(CsrAskedSigner(ca), lambda: ca.roots_pem, options, clock)
    secret = await issuer.decide(None)
    assert secret is not None
    sans = _leaf(secret).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["istiod.mesh.svc", "istiod-canary.mesh.svc"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [options.uri]
    assert await issuer.decide(secret) is None  # what it asked for: kept


async def test_an_answer_for_other_names_or_a_failure_keeps_the_secret_and_retries(tmp_path: Path) -> None:
    clock = ManualClock()
    ca = LocalCA.open(tmp_path / "ca", clock=clock)
    options = IstiodCertOptions(key_algorithm="ECDSA", key_size=256)
    kept = await IstiodSecretIssuer(ca, lambda: ca.roots_pem, options, clock).decide(None)
    assert kept is not None
    stale = {**kept, "data": {**kept["data"], "ca.crt": ""}}  # must be replaced
    tampering = IstiodSecretIssuer(CsrAskedSigner(ca, tamper=True), lambda: ca.roots_pem, options, clock)
    assert await tampering.decide(stale) is None  # the refused answer is not written
    assert await tampering.decide(None) is None
    assert tampering.renew_in == 2.0  # backing off: 1s, then 2s

    class Down:
        async def sign(self, request: SigningRequest) -> SignedChain:
            raise BackendUnavailable("WATCH_NOT_SYNCED", "not yet")

    failing = IstiodSecretIssuer(Down(), lambda: ca.roots_pem, options, clock)
    assert await failing.decide(stale) is None and failing.renew_in == 1.0
