"""Verification of issued chains (bridge.certificates): hostile chains, built with cryptography's builder in
tests/support/chain_builder.py, each of which the path validation must refuse; and the honest shapes it accepts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.certificates import certificates_pem, load_bundle, split_issued_chain, verify_issued_chain
from bridge.errors import BackendUnavailable, IssuerFailed
from tests.support.chain_builder import NOW, SPIFFE_ID, key_usage, make_ca, make_leaf


def refused(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate]) -> str:
    with pytest.raises(IssuerFailed) as caught:
        verify_issued_chain(leaf, intermediates, roots, now=NOW)
    assert caught.value.reason == "CHAIN_NOT_TRUSTED"
    return caught.value.detail


# --- accepted ----------------------------------------------------------------------------------------------------
def test_a_spiffe_leaf_with_only_a_uri_san_verifies_through_an_intermediate() -> None:
    root = make_ca("root")
    intermediate = make_ca("intermediate", root)
    leaf = make_leaf(intermediate)
    path = verify_issued_chain(leaf, [intermediate.certificate], [root.certificate], now=NOW)
    assert path == [leaf, intermediate.certificate, root.certificate]


def test_a_serving_leaf_with_dns_names_and_server_auth_only_verifies() -> None:
    root = make_ca("root")
    leaf = make_leaf(root, sans=[x509.DNSName("cert-manager-istio-csr.istio-system.svc")],
                     usages=[ExtendedKeyUsageOID.SERVER_AUTH])  # fmt: skip
    assert verify_issued_chain(leaf, [], [root.certificate], now=NOW)[-1] == root.certificate


def test_a_pinned_intermediate_and_a_second_root_for_rotation_are_trust_anchors() -> None:
    root, other = make_ca("root"), make_ca("next root")
    intermediate = make_ca("intermediate", root)
    leaf = make_leaf(intermediate)
    assert verify_issued_chain(leaf, [], [intermediate.certificate], now=NOW)[-1] == intermediate.certificate
    assert verify_issued_chain(leaf, [intermediate.certificate], [other.certificate, root.certificate], now=NOW)


# --- refused -----------------------------------------------------------------------------------------------------
def test_an_expired_leaf_is_refused() -> None:
    """The defect found: a leaf two days past its notAfter was accepted."""
    root = make_ca("root")
    leaf = make_leaf(root, not_before=NOW - timedelta(days=3), not_after=NOW - timedelta(days=2))
    refused(leaf, [], [root.certificate])


def test_a_leaf_not_yet_valid_is_refused() -> None:
    root = make_ca("root")
    leaf = make_leaf(root, not_before=NOW + timedelta(hours=1), not_after=NOW + timedelta(days=1))
    refused(leaf, [], [root.certificate])


def test_an_expired_intermediate_or_root_is_refused() -> None:
    root = make_ca("root")
    stale = make_ca("intermediate", root, not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1))
    refused(make_leaf(stale), [stale.certificate], [root.certificate])
    old_root = make_ca("old root", not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(seconds=1))
    refused(make_leaf(old_root), [], [old_root.certificate])


def test_a_chain_that_does_not_reach_the_pinned_roots_is_refused() -> None:
    root, stranger = make_ca("root"), make_ca("stranger")
    intermediate = make_ca("intermediate", root)
    leaf = make_leaf(intermediate)
    refused(leaf, [intermediate.certificate], [stranger.certificate])
    refused(leaf, [], [root.certificate])  # the intermediate is missing
    # an impostor with the root's name but another key
    impostor = make_ca("root")
    refused(make_leaf(impostor), [], [root.certificate])


def test_an_intermediate_beyond_its_path_length_is_refused() -> None:
    root = make_ca("root")
    first = make_ca("first", root, path_length=0)  # may sign leaves only
    second = make_ca("second", first)
    refused(make_leaf(second), [second.certificate, first.certificate], [root.certificate])
    assert verify_issued_chain(make_leaf(first), [first.certificate], [root.certificate], now=NOW)


def test_an_intermediate_without_key_cert_sign_is_refused() -> None:
    root = make_ca("root")
    no_cert_sign = make_ca("no keyCertSign", root, key_usage=key_usage(cert_sign=False))
    refused(make_leaf(no_cert_sign), [no_cert_sign.certificate], [root.certificate])
    no_key_usage = make_ca("no keyUsage", root, key_usage=None)
    refused(make_leaf(no_key_usage), [no_key_usage.certificate], [root.certificate])


def test_a_leaf_with_ca_true_is_refused() -> None:
    root = make_ca("root")
    refused(make_leaf(root, ca=True), [], [root.certificate])


def test_a_leaf_for_neither_server_nor_client_auth_is_refused() -> None:
    root = make_ca("root")
    refused(make_leaf(root, usages=[ExtendedKeyUsageOID.CODE_SIGNING]), [], [root.certificate])


def test_no_roots_is_unavailable_not_untrusted() -> None:
    root = make_ca("root")
    with pytest.raises(BackendUnavailable, match="NO_ROOTS"):
        verify_issued_chain(make_leaf(root), [], [], now=NOW)


# --- parsing -----------------------------------------------------------------------------------------------------
def test_split_drops_self_signed_roots_and_keeps_the_order() -> None:
    root = make_ca("root")
    intermediate = make_ca("intermediate", root)
    leaf = make_leaf(intermediate)
    pem = certificates_pem([leaf, intermediate.certificate, root.certificate]).encode()
    assert split_issued_chain(pem, what="chain") == (leaf, [intermediate.certificate])
    assert load_bundle(pem, what="chain") == [leaf, intermediate.certificate, root.certificate]


@pytest.mark.parametrize(
    "pem",
    [b"not pem", b"", b"x" * (331 * 1024)],
    ids=["garbage", "empty", "oversized"],
)
def test_split_refuses_what_is_not_a_bounded_chain(pem: bytes) -> None:
    with pytest.raises(IssuerFailed, match="BAD_CHAIN"):
        split_issued_chain(pem, what="status.certificate")


def test_split_refuses_too_many_certificates() -> None:
    root = make_ca("root")
    with pytest.raises(IssuerFailed, match="BAD_CHAIN"):
        split_issued_chain(certificates_pem([root.certificate] * 11).encode(), what="status.certificate")


def test_a_minimal_leaf_under_a_bare_pinned_root_verifies() -> None:
    """What the hand-written check accepted and real issuers make: a root with only CA:TRUE (``openssl req -x509``)
    and a leaf without authorityKeyIdentifier, keyUsage or extended key usage (Go omits the AKI when the CA has no
    subjectKeyIdentifier)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare root")])
    bare_root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE_ID)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert verify_issued_chain(leaf, [], [bare_root], now=NOW) == [leaf, bare_root]
    # the same leaf two days after its notAfter: refused, however lenient the extensions are
    with pytest.raises(IssuerFailed, match="CHAIN_NOT_TRUSTED"):
        verify_issued_chain(leaf, [], [bare_root], now=NOW + timedelta(days=2))
