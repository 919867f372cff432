"""A grpc.aio CreateCertificate server that does no work: the transport floor under meshsigner's handler.

    python bench/noop_ca_server.py --port P [--cert FILE --key FILE] [--sync]   (plaintext without --cert)

Same gRPC server options as meshsigner's listener (imported from it, so the two cannot drift); it answers every
call with a fixed two-element chain. Driven by the same Go client as the real servers, its CPU per call is what gRPC
core, HTTP/2, protobuf and the asyncio handler dispatch cost on their own; run once with TLS and once without, the
difference is TLS. ``--sync`` serves with the threaded ``grpc.server`` (a thread pool runs the handler) instead of
grpc.aio, to compare the two transports' floors.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proto import istio_ca_pb2, istio_ca_pb2_grpc
from signer.grpc_server import SERVER_OPTIONS

CHAIN = ["-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n", "root"]


class Noop(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    async def CreateCertificate(self, request, context):  # the generated base class is untyped
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=CHAIN)


class SyncNoop(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    def CreateCertificate(self, request, context):  # the generated base class is untyped
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=CHAIN)


def _listen(server: grpc.Server | grpc.aio.Server, port: int, cert: Path | None, key: Path | None) -> None:
    address = f"127.0.0.1:{port}"
    if cert and key:
        server.add_secure_port(address, grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    else:
        server.add_insecure_port(address)


def serve_sync(port: int, cert: Path | None, key: Path | None) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
    istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(SyncNoop(), server)
    _listen(server, port, cert, key)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


async def serve(port: int, cert: Path | None, key: Path | None) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(Noop(), server)
    _listen(server, port, cert, key)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--sync", action="store_true", help="threaded grpc.server instead of grpc.aio")
    parser.add_argument("--uvloop", action="store_true", help="grpc.aio on uvloop's event loop")
    args = parser.parse_args()
    if args.sync:
        serve_sync(args.port, args.cert, args.key)
    elif args.uvloop:
        import uvloop

        uvloop.run(serve(args.port, args.cert, args.key))
    else:
        asyncio.run(serve(args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
