"""The gRPC server object: transport limits from docs/robustness.md §Limits, the CA service and the health service."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto import istio_ca_pb2
from signer.request_checks import decode_request
from signer.service import CertificateService

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 1024 * 1024),  # the CSR cap is 64 KiB; nothing legitimate is larger
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.max_concurrent_streams", 256),
    # Istio's agents ping every 30 s during a call; accept that, GOAWAY a client pinging every millisecond.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.server_handshake_timeout_ms", 10_000),
    ("grpc.max_allowed_incoming_connections", 4096),
    ("grpc.so_reuseport", 1),  # --workers processes share the port
)


def build_server(
    service: CertificateService, credentials: grpc.ServerCredentials, address: str
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Returns the (unstarted) server, its health servicer and the bound port (address may use port 0)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_certificate_service(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, health_servicer, port


def add_certificate_service(service: CertificateService, server: grpc.aio.Server) -> None:
    """Like the generated ``add_..._to_server`` but with our deserializer: it never raises, so a request protobuf
    cannot parse (a Struct nested past the parser's limit) reaches the handler and is refused as INVALID_ARGUMENT
    instead of grpcio's UNKNOWN carrying the parser's message."""
    handlers = {
        "CreateCertificate": grpc.unary_unary_rpc_method_handler(
            service.CreateCertificate,
            request_deserializer=decode_request,
            response_serializer=istio_ca_pb2.IstioCertificateResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
