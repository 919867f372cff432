"""Renewal by mesh client certificate against a real ``meshsigner serve --signer local
--enable-client-cert-authenticator``: a workload renews its own identity without a token, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from proto import istio_ca_pb2_grpc
from tests.e2e.calls import create
from tests.support.client_certs import MeshCA, key_pem, pem
from tests.support.csr_builder import make_csr
from tests.support.processes import SERVER_NAME, ServerProcess, local_signer_flags, start_server
from tests.support.tokens import TokenIssuer

WEB = "spiffe://cluster.local/ns/orders/sa/web"
ADMIN = "spiffe://cluster.local/ns/orders/sa/admin"


def start(base: Path, issuer: TokenIssuer, *flags: str) -> ServerProcess:
    return start_server([*local_signer_flags(base, issuer), "--log-format=json", *flags], base / "serve.log")


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, issuer: TokenIssuer) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("mtls")
    server = start(base, issuer, "--enable-client-cert-authenticator")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def ca_dir(mtls_server: ServerProcess) -> Path:
    return mtls_server.log_path.parent / "ca"


def stub(
    server: ServerProcess, ca_dir: Path, client: tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]] | None
) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
    """A fresh connection (own subchannel: the certificate is per connection) presenting ``client`` if given."""
    root = (ca_dir / "root-cert.pem").read_bytes()
    if client is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        key, chain = client
        credentials = grpc.ssl_channel_credentials(root, key_pem(key), b"".join(pem(c) for c in chain))
    options = [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)]
    return istio_ca_pb2_grpc.IstioCertificateServiceStub(grpc.secure_channel(server.address, credentials, options))


def leaf_uris(chain: list[str]) -> list[str]:
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def issued_by_token(
    server: ServerProcess, ca_dir: Path, issuer: TokenIssuer
) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """What a sidecar holds after its first, token-authenticated request: a key and its mesh certificate chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    code, chain, details = create(stub(server, ca_dir, None), make_csr([WEB], private_key=key), issuer.token())
    assert code == grpc.StatusCode.OK, details
    return key, [x509.load_pem_x509_certificate(element.encode()) for element in chain[:-1]]


def test_a_workload_renews_its_own_identity_with_its_certificate_and_no_token(
    mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer
) -> None:
    client = issued_by_token(mtls_server, ca_dir, issuer)
    renewed_key = ec.generate_private_key(ec.SECP256R1())
    renewal = stub(mtls_server, ca_dir, client)
    code, chain, details = create(renewal, make_csr([WEB], private_key=renewed_key), token=None)
    assert code == grpc.StatusCode.OK, details
    assert leaf_uris(chain) == [WEB]
    renewed = x509.load_pem_x509_certificate(chain[0].encode())
    assert renewed.public_key() == renewed_key.public_key()
    # and the renewed certificate renews again (istio-csr's e2e: a second request succeeds)
    code, _, details = create(stub(mtls_server, ca_dir, (renewed_key, [renewed])), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.OK, details


def test_a_certificate_renews_only_its_own_identity(
    mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer
) -> None:
    renewal = stub(mtls_server, ca_dir, issued_by_token(mtls_server, ca_dir, issuer))
    code, _, details = create(renewal, make_csr([ADMIN]), token=None)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    code, _, details = create(renewal, make_csr([WEB, ADMIN]), token=None)
    assert code != grpc.StatusCode.OK, details


def test_a_valid_certificate_wins_over_a_token_beside_it(
    mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer
) -> None:
    """istiod's order: the client certificate is tried first; the token of another account does not count."""
    renewal = stub(mtls_server, ca_dir, issued_by_token(mtls_server, ca_dir, issuer))
    admin_token = issuer.token(service_account="admin")
    code, chain, details = create(renewal, make_csr([WEB]), token=admin_token)
    assert code == grpc.StatusCode.OK, details
    assert leaf_uris(chain) == [WEB]
    code, _, details = create(renewal, make_csr([ADMIN]), token=admin_token)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details


def test_an_expired_certificate_is_refused(mtls_server: ServerProcess, ca_dir: Path) -> None:
    """Refused in the TLS handshake (as Go's VerifyClientCertIfGiven does for istiod and istio-csr): the call never
    reaches the service, so no certificate can come out of it."""
    ca = MeshCA.load(ca_dir)
    key, leaf = ca.leaf((WEB,), not_before=datetime.now(UTC) - timedelta(hours=3), lifetime=timedelta(hours=1))
    code, _, details = create(stub(mtls_server, ca_dir, (key, [leaf])), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.UNAVAILABLE, details


def test_a_certificate_from_a_foreign_root_is_refused(mtls_server: ServerProcess, ca_dir: Path) -> None:
    foreign = MeshCA.root("foreign root")
    key, leaf = foreign.leaf((WEB,))
    code, _, details = create(stub(mtls_server, ca_dir, (key, [leaf])), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.UNAVAILABLE, details


def test_a_certificate_with_two_uris_is_refused(mtls_server: ServerProcess, ca_dir: Path) -> None:
    """It chains to our root, so TLS accepts it; meshsigner's own check refuses it."""
    key, leaf = MeshCA.load(ca_dir).leaf((WEB, ADMIN))
    code, _, details = create(stub(mtls_server, ca_dir, (key, [leaf])), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    assert "CLIENT_CERT_NOT_ONE_URI" in details


def test_a_certificate_that_does_not_qualify_falls_back_to_the_token(
    mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer
) -> None:
    """istiod's "first success wins": the token beside an unusable certificate still authenticates."""
    key, leaf = MeshCA.load(ca_dir).leaf((WEB, ADMIN))
    code, chain, details = create(stub(mtls_server, ca_dir, (key, [leaf])), make_csr([WEB]), token=issuer.token())
    assert code == grpc.StatusCode.OK, details
    assert leaf_uris(chain) == [WEB]


def test_a_certificate_caller_cannot_impersonate(mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer) -> None:
    """istiod checks a node proxy through its token's pod; a certificate names none."""
    renewal = stub(mtls_server, ca_dir, issued_by_token(mtls_server, ca_dir, issuer))
    fields = {"ImpersonatedIdentity": ADMIN}
    code, _, details = create(renewal, make_csr([ADMIN]), token=None, metadata_fields=fields)
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "IMPERSONATION_NEEDS_TOKEN" in details


def test_token_only_clients_are_unaffected(mtls_server: ServerProcess, ca_dir: Path, issuer: TokenIssuer) -> None:
    code, chain, details = create(stub(mtls_server, ca_dir, None), make_csr([WEB]), issuer.token())
    assert code == grpc.StatusCode.OK, details
    assert leaf_uris(chain) == [WEB]
    code, _, details = create(stub(mtls_server, ca_dir, None), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details


def test_with_the_flag_off_a_client_certificate_is_ignored(
    tmp_path: Path, issuer: TokenIssuer, mtls_server: ServerProcess, ca_dir: Path
) -> None:
    server = start(tmp_path, issuer)
    try:
        own_ca = tmp_path / "ca"
        key, leaf = MeshCA.load(own_ca).leaf((WEB,))
        with_cert = stub(server, own_ca, (key, [leaf]))
        code, _, details = create(with_cert, make_csr([WEB]), token=None)
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
        code, _, details = create(with_cert, make_csr([WEB]), token=issuer.token())
        assert code == grpc.StatusCode.OK, details
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def intermediate_server(tmp_path_factory: pytest.TempPathFactory, issuer: TokenIssuer) -> Iterator[ServerProcess]:
    """The local signer on Istio's cacerts layout: workload leaves come from an intermediate below the root."""
    base = tmp_path_factory.mktemp("mtls-intermediate")
    root = MeshCA.root()
    intermediate = root.intermediate()
    cacerts = base / "ca"
    cacerts.mkdir()
    (cacerts / "root-cert.pem").write_bytes(pem(root.certificate))
    (cacerts / "ca-cert.pem").write_bytes(pem(intermediate.certificate))
    (cacerts / "cert-chain.pem").write_bytes(pem(intermediate.certificate) + pem(root.certificate))
    (cacerts / "ca-key.pem").write_bytes(key_pem(intermediate.key))
    (cacerts / "ca-key.pem").chmod(0o600)
    server = start(base, issuer, "--enable-client-cert-authenticator")
    yield server
    assert server.stop() == 0, server.log()


def test_the_intermediates_a_workload_sends_complete_its_chain(
    intermediate_server: ServerProcess, issuer: TokenIssuer
) -> None:
    ca_dir = intermediate_server.log_path.parent / "ca"
    key, chain = issued_by_token(intermediate_server, ca_dir, issuer)
    assert len(chain) == 2  # leaf, intermediate
    code, _, details = create(stub(intermediate_server, ca_dir, (key, chain)), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.OK, details
    # the leaf alone leads nowhere: refused in the handshake
    code, _, details = create(stub(intermediate_server, ca_dir, (key, chain[:1])), make_csr([WEB]), token=None)
    assert code == grpc.StatusCode.UNAVAILABLE, details
