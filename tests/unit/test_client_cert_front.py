"""The TLS front of --enable-client-cert-authenticator asks for a client certificate without requiring one, takes a
renewed serving certificate and rotated roots at the next connection, and hands gRPC the chain per connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge.signing import ServingMaterial
from signer.client_cert_front import ClientCertFront
from tests.support.chain_builder import Authority, make_leaf
from tests.support.client_certs import MeshCA, key_pem, pem

SERVER_NAME = "meshsigner.test"
WEB = "spiffe://cluster.local/ns/orders/sa/web"


def serving_material(ca: MeshCA) -> ServingMaterial:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = make_leaf(
        Authority(ca.certificate, ca.key),
        sans=[x509.DNSName(SERVER_NAME)],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
        key=key,
    )
    return ServingMaterial(key_pem(key), pem(leaf), leaf.not_valid_before_utc, leaf.not_valid_after_utc)


@dataclass
class Front:
    front: ClientCertFront
    port: int
    ca: MeshCA
    material: ServingMaterial
    roots: list[x509.Certificate]

    async def handshake(
        self, client: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None, tmp: Path | None = None
    ) -> x509.Certificate:
        """A TLS client (ALPN h2) that trusts the serving CA; returns the server certificate it was shown."""
        context = ssl.create_default_context(cadata=pem(self.ca.certificate).decode())
        context.set_alpn_protocols(["h2"])
        # TLS 1.2: a refused client certificate fails the handshake itself (1.3 reports it only after it)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        if client is not None:
            assert tmp is not None
            (tmp / "client.key").write_bytes(key_pem(client[0]))
            (tmp / "client.crt").write_bytes(pem(client[1]))
            context.load_cert_chain(tmp / "client.crt", tmp / "client.key")
        _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname=SERVER_NAME)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)


@asynccontextmanager
async def running_front(*, minimum_tls13: bool = False) -> AsyncIterator[Front]:
    """Built inside the test's own event loop (the front's listener belongs to the loop that serves it)."""
    ca = MeshCA.root("serving and mesh root")
    state = Front(None, 0, ca, serving_material(ca), [ca.certificate])  # type: ignore[arg-type]
    state.front = ClientCertFront(
        material=lambda: state.material, roots=lambda: state.roots, minimum_tls13=minimum_tls13
    )
    state.port = await state.front.start("127.0.0.1:0")
    try:
        yield state
    finally:
        await state.front.close()


async def test_a_renewed_serving_certificate_is_used_from_the_next_connection() -> None:
    async with running_front() as front:
        await renewed_certificate_is_used(front)


async def renewed_certificate_is_used(front: Front) -> None:
    first = x509.load_pem_x509_certificate(front.material.chain_pem)
    assert await front.handshake() == first
    front.material = serving_material(front.ca)
    renewed = x509.load_pem_x509_certificate(front.material.chain_pem)
    assert renewed != first
    assert await front.handshake() == renewed


async def test_the_client_certificate_is_optional_and_checked_against_the_current_roots(tmp_path: Path) -> None:
    async with running_front() as front:
        await optional_and_current_roots(front, tmp_path)


async def optional_and_current_roots(front: Front, tmp_path: Path) -> None:
    assert await front.handshake()  # no client certificate: accepted
    new_root = MeshCA.root("new mesh root")
    client = new_root.leaf((WEB,))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await front.handshake(client, tmp_path)  # not (yet) one of our roots
    front.roots.append(new_root.certificate)
    assert await front.handshake(client, tmp_path)  # the rotated bundle applies at the next connection


async def test_grpc_behind_the_front_sees_each_connections_chain() -> None:
    async with running_front() as front:
        await grpc_sees_each_chain(front)


async def grpc_sees_each_chain(front: Front) -> None:
    seen: list[tuple[x509.Certificate, ...]] = []
    callers: list[str] = []
    front_ = front.front

    class Recorder(health.aio.HealthServicer):
        async def Check(self, request, context):
            seen.append(front_.peer_chain(context.peer()))
            callers.append(front_.remote_peer(context.peer()))
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Recorder(), server)
    server.add_secure_port(front_.grpc_address, grpc.local_server_credentials(grpc.LocalConnectionType.UDS))
    await server.start()
    try:
        key, leaf = front.ca.leaf((WEB,))
        root = pem(front.ca.certificate)
        options = [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)]
        for credentials in (
            grpc.ssl_channel_credentials(root, key_pem(key), pem(leaf)),
            grpc.ssl_channel_credentials(root),
        ):
            async with grpc.aio.secure_channel(f"127.0.0.1:{front.port}", credentials, options) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        await server.stop(None)
    assert seen == [(leaf,), ()]
    # per-peer limits see the TLS client's address, not the pipe's unix path
    assert [caller.rpartition(":")[0] for caller in callers] == ["ipv4:127.0.0.1", "ipv4:127.0.0.1"]


async def test_the_minimum_tls_version_flag_is_honoured() -> None:
    """Unlike gRPC Python's listener, the front applies --serving-tls-min-version=VersionTLS13."""
    async with running_front(minimum_tls13=True) as front:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await front.handshake()  # this client speaks TLS 1.2 at most
