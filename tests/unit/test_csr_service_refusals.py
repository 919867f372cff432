"""The service over an in-process gRPC server with our request deserializer (``add_certificate_service``).

- An undecodable request is INVALID_ARGUMENT through the normal refusal path (not grpcio's UNKNOWN).
- A bug of ours is INTERNAL, and its log line is rate-limited like every other refusal's.
The authenticator here is a deliberately broken implementation of our own ``Authenticator`` protocol: the way to
put a bug on the path without touching the product.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

from clocks import SystemClock
from signer.auth.base import WorkloadIdentity
from signer.grpc_server import add_certificate_service
from signer.metrics import ServerMetrics
from signer.service import CertificateService, ServiceConfig
from tests.support.csr_builder import make_csr

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


class BrokenAuthenticator:
    ready = True

    async def authenticate(self, token: str) -> WorkloadIdentity:
        raise RuntimeError("a bug in our own code")


class Unreached:
    """Decider and backend: the calls here end before either is asked anything."""

    ca_not_after = None


@asynccontextmanager
async def serving() -> AsyncIterator[str]:
    registry = CollectorRegistry()
    service = CertificateService(
        ServiceConfig(
            trust_domain="cluster.local",
            cluster_id="Kubernetes",
            trusted_node_accounts=frozenset(),
            request_timeout_seconds=5.0,
            max_in_flight=8,
            backend_name="local",
        ),
        authenticator=BrokenAuthenticator(),
        decider=Unreached(),  # type: ignore[arg-type]  # never asked: the calls end before the decision
        backend=Unreached(),  # type: ignore[arg-type]  # never asked either
        metrics=ServerMetrics(registry),
        clock=SystemClock(),
    )
    server = grpc.aio.server()
    add_certificate_service(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _call(address: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable = channel.unary_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(payload, metadata=[("authorization", "Bearer x"), ("clusterid", "Kubernetes")], timeout=10)
    return failed.value


def _request_bytes() -> bytes:
    from proto import istio_ca_pb2

    return istio_ca_pb2.IstioCertificateRequest(csr=make_csr(["spiffe://cluster.local/ns/a/sa/b"])).SerializeToString()


async def test_undecodable_request_is_invalid_argument() -> None:
    async with serving() as address:
        error = await _call(address, b"\x0a\xff\xff\xff\xff\x0f")  # csr field whose length runs past the end
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("REQUEST_MALFORMED")


async def test_internal_error_log_is_rate_limited() -> None:
    events: list[str] = []
    sink = logger.add(lambda message: events.append(message.record["extra"].get("event", "")), level="DEBUG")
    try:
        async with serving() as address:
            codes = [(await _call(address, _request_bytes())).code() for _ in range(5)]
    finally:
        logger.remove(sink)
    assert codes == [grpc.StatusCode.INTERNAL] * 5
    assert events.count("csr_internal_error") == 1
