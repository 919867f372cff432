"""The client-certificate authenticator verifies the presented chain itself (roots, time, clientAuth) and accepts
exactly one workload SPIFFE ID of our trust domain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from signer.auth.base import WorkloadIdentity
from signer.auth.client_cert import ClientCertAuthenticator, load_peer_chain, peer_chain_from_auth_context
from signer.errors import AuthenticationFailed
from tests.support.client_certs import MeshCA, pem
from tests.support.clock import ManualClock

START = datetime(2026, 6, 1, tzinfo=UTC)
WEB = "spiffe://cluster.local/ns/orders/sa/web"


@pytest.fixture(scope="module")
def root() -> MeshCA:
    return MeshCA.root(now=START)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def authenticator(roots: list[x509.Certificate], clock: ManualClock) -> ClientCertAuthenticator:
    return ClientCertAuthenticator(lambda: roots, trust_domain="cluster.local", clock=clock)


def refusal(auth: ClientCertAuthenticator, chain: list[x509.Certificate]) -> str:
    with pytest.raises(AuthenticationFailed) as raised:
        auth.authenticate(chain)
    return raised.value.reason


def test_a_leaf_of_the_pinned_root_names_its_workload(root: MeshCA, clock: ManualClock) -> None:
    _, leaf = root.leaf((WEB,), not_before=START)
    identity = authenticator([root.certificate], clock).authenticate([leaf])
    assert identity == WorkloadIdentity("orders", "web")


def test_intermediates_sent_by_the_peer_complete_the_chain(root: MeshCA, clock: ManualClock) -> None:
    intermediate = root.intermediate(now=START)
    _, leaf = intermediate.leaf((WEB,), not_before=START)
    auth = authenticator([root.certificate], clock)
    assert auth.authenticate([leaf, *intermediate.chain]) == WorkloadIdentity("orders", "web")
    assert refusal(auth, [leaf]) == "CLIENT_CERT_INVALID"  # without its intermediate it leads nowhere


@pytest.mark.parametrize(
    ("seconds_later", "expected"),
    [(-600, "CLIENT_CERT_INVALID"), (1800, None), (3601, "CLIENT_CERT_INVALID")],
    ids=["not-yet-valid", "valid", "expired"],
)
def test_validity_is_judged_at_the_injected_clock(root: MeshCA, seconds_later: int, expected: str | None) -> None:
    _, leaf = root.leaf((WEB,), not_before=START, lifetime=timedelta(hours=1))
    clock = ManualClock(START + timedelta(seconds=seconds_later))
    auth = authenticator([root.certificate], clock)
    if expected is None:
        assert auth.authenticate([leaf]).principal == "orders/web"
    else:
        assert refusal(auth, [leaf]) == expected


def test_a_foreign_root_is_refused(root: MeshCA, clock: ManualClock) -> None:
    foreign = MeshCA.root("foreign root", now=START)
    _, leaf = foreign.leaf((WEB,), not_before=START)
    assert refusal(authenticator([root.certificate], clock), [leaf]) == "CLIENT_CERT_INVALID"


def test_a_self_signed_leaf_sending_the_root_along_is_refused(root: MeshCA, clock: ManualClock) -> None:
    """Peer-sent certificates are only helpers: a copy of a foreign root in the chain does not make it trusted."""
    foreign = MeshCA.root("foreign root", now=START)
    _, leaf = foreign.leaf((WEB,), not_before=START)
    assert refusal(authenticator([root.certificate], clock), [leaf, foreign.certificate]) == "CLIENT_CERT_INVALID"


def test_root_rotation_applies_at_the_next_call(root: MeshCA, clock: ManualClock) -> None:
    new_root = MeshCA.root("new root", now=START)
    roots = [root.certificate]
    auth = ClientCertAuthenticator(lambda: roots, trust_domain="cluster.local", clock=clock)
    _, new_leaf = new_root.leaf((WEB,), not_before=START)
    assert refusal(auth, [new_leaf]) == "CLIENT_CERT_INVALID"
    roots.append(new_root.certificate)
    assert auth.authenticate([new_leaf]).principal == "orders/web"
    roots.remove(root.certificate)
    _, old_leaf = root.leaf((WEB,), not_before=START)
    assert refusal(auth, [old_leaf]) == "CLIENT_CERT_INVALID"


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ((WEB, "spiffe://cluster.local/ns/orders/sa/admin"), "CLIENT_CERT_NOT_ONE_URI"),
        ((), "CLIENT_CERT_INVALID"),  # path validation already demands a SAN
        (("spiffe://other.domain/ns/orders/sa/web",), "CLIENT_CERT_FOREIGN_TRUST_DOMAIN"),
        (("spiffe://cluster.local/workload/web",), "CLIENT_CERT_NO_SPIFFE_ID"),
        (("https://cluster.local/ns/orders/sa/web",), "CLIENT_CERT_NO_SPIFFE_ID"),
    ],
    ids=["two-uris", "no-san", "foreign-trust-domain", "not-a-workload-id", "not-spiffe"],
)
def test_exactly_one_workload_spiffe_id_of_our_trust_domain(
    root: MeshCA, clock: ManualClock, uris: tuple[str, ...], expected: str
) -> None:
    _, leaf = root.leaf(uris, not_before=START)
    assert refusal(authenticator([root.certificate], clock), [leaf]) == expected


def test_a_certificate_not_for_client_authentication_is_refused(root: MeshCA, clock: ManualClock) -> None:
    _, leaf = root.leaf((WEB,), not_before=START, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    assert refusal(authenticator([root.certificate], clock), [leaf]) == "CLIENT_CERT_INVALID"


def test_no_chain_no_roots_and_overlong_chains_are_refused(root: MeshCA, clock: ManualClock) -> None:
    _, leaf = root.leaf((WEB,), not_before=START)
    assert refusal(authenticator([root.certificate], clock), []) == "NO_CLIENT_CERTIFICATE"
    assert refusal(authenticator([], clock), [leaf]) == "CLIENT_CERT_NO_ROOTS"
    assert refusal(authenticator([root.certificate], clock), [leaf] * 6) == "CLIENT_CERT_CHAIN_TOO_LONG"


def test_chains_read_from_a_grpc_auth_context(root: MeshCA) -> None:
    intermediate = root.intermediate(now=START)
    _, leaf = intermediate.leaf((WEB,), not_before=START)
    chain_pems = [pem(leaf), *(pem(c) for c in intermediate.chain)]
    assert peer_chain_from_auth_context({"x509_pem_cert_chain": chain_pems}) == [leaf, *intermediate.chain]
    assert peer_chain_from_auth_context({"x509_pem_cert": [pem(leaf)]}) == [leaf]
    assert peer_chain_from_auth_context({"transport_security_type": [b"ssl"]}) == []
    with pytest.raises(AuthenticationFailed) as raised:
        load_peer_chain([b"not a certificate"])
    assert raised.value.reason == "CLIENT_CERT_MALFORMED"
