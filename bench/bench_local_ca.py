"""Local-CA issuance over gRPC+TLS against the crypto floor, measured in the same run.

    python bench/bench_local_ca.py [--requests 2000] [--workers 1] [--concurrency 1,16,64] [--ca-key ecdsa|rsa]
                                   [--connections 1]

Prints: the crypto floor (parse + verify + build + sign of one leaf with `cryptography`, no gRPC), a no-op gRPC
handler driven by the same client (what the transport alone allows here), signed CSRs/s with p50/p99 at each
concurrency, the ratio against the floor, and the time from process start to /readyz 200.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.local_ca import LocalCA
from bridge.signing import SigningRequest
from proto import istio_ca_pb2, istio_ca_pb2_grpc
from tests.support.csr_builder import make_csr
from tests.support.processes import readyz, start_server
from tests.support.tokens import TokenIssuer

SERVER_NAME = "cert-manager-istio-csr.cert-manager.svc"


def prepared(count: int, issuer: TokenIssuer, identities: int = 50) -> list[tuple[str, str]]:
    """(token, csr) pairs made before timing; 50 identities, each with its own token (cached server-side)."""
    tokens = {i: issuer.token(f"ns{i}", f"sa{i}", lifetime=7200) for i in range(identities)}
    csrs = {i: make_csr([f"spiffe://cluster.local/ns/ns{i}/sa/sa{i}"]) for i in range(identities)}
    return [(tokens[i % identities], csrs[i % identities]) for i in range(count)]


def crypto_floor(ca: LocalCA, csrs: list[str], seconds: float = 3.0) -> float:
    """Leaves per second for parse + verify + build + sign in one thread."""
    not_after = datetime.now(UTC) + timedelta(hours=1)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pem = csrs[done % len(csrs)]
        csr = x509.load_pem_x509_csr(pem.encode())
        assert csr.is_signature_valid
        uri = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(uri.get_values_for_type(x509.UniformResourceIdentifier))
        ca.sign_now(SigningRequest(pem, csr, csr.public_key(), uris, (), not_after, 3600))
        done += 1
    return done / (time.perf_counter() - started)


class _Noop(istio_ca_pb2_grpc.IstioCertificateServiceServicer):
    async def CreateCertificate(self, request, context):
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=["leaf", "root"])


async def drive(
    address: str, creds: grpc.ChannelCredentials, work: list[tuple[str, str]], concurrency: int, connections: int = 1
) -> tuple[float, float, float]:
    """Sends ``work`` with ``concurrency`` callers spread over ``connections`` TLS connections (a fleet has one
    per agent; SO_REUSEPORT spreads connections, not calls, over --workers processes)."""
    connections = max(1, min(connections, concurrency))
    options = [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(address, creds, options=options) for _ in range(connections)]
    stubs = [istio_ca_pb2_grpc.IstioCertificateServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.channel_ready()
    latencies: list[float] = []
    queue = iter(work)

    async def caller(stub: istio_ca_pb2_grpc.IstioCertificateServiceStub) -> None:
        for token, csr in queue:
            request = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=86400)
            started = time.perf_counter()
            await stub.CreateCertificate(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(stubs[i % connections]) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    latencies.sort()
    return len(work) / elapsed, statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


async def noop_rate(creds_pair, creds: grpc.ChannelCredentials, work, concurrency: int) -> float:
    server = grpc.aio.server()
    istio_ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(_Noop(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([creds_pair]))
    await server.start()
    try:
        rate, _, _ = await drive(f"127.0.0.1:{port}", creds, work, concurrency)
    finally:
        await server.stop(None)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--ca-key", choices=("ecdsa", "rsa"), default="ecdsa")
    parser.add_argument("--connections", type=int, default=1, help="TLS connections the callers share")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    base = Path(tempfile.mkdtemp(prefix="meshsigner-bench-"))
    issuer = TokenIssuer()
    ca = LocalCA.open(base / "ca", key_type=args.ca_key)
    work = prepared(args.requests, issuer)
    floor = crypto_floor(ca, [csr for _, csr in work[:50]])

    started = time.perf_counter()
    server = start_server(
        [
            "--signer=local", f"--local-ca-dir={base / 'ca'}", "--authenticator=jwks",
            f"--jwks-file={issuer.write_jwks(base / 'jwks.json')}", f"--token-issuer={issuer.issuer}",
            "--serving-signature-algorithm=ECDSA", "--serving-certificate-key-size=256",
            f"--workers={args.workers}", "--log-level=warning",
        ],
        base / "serve.log",
    )  # fmt: skip
    ready_after = time.perf_counter() - started
    assert readyz(server.readiness_port)[0] == 200
    creds = grpc.ssl_channel_credentials((base / "ca" / "root-cert.pem").read_bytes())
    serving = asyncio.run(ca.issue_serving_certificate((SERVER_NAME,), 3600, "ECDSA", 256))
    try:
        print(f"machine: {__import__('os').cpu_count()} cores; CA key {args.ca_key}; workers {args.workers}")
        print(f"crypto floor (parse+verify+build+sign, 1 thread): {floor:8.0f} leaves/s")
        print(f"start to /readyz 200:                            {ready_after * 1000:8.0f} ms")
        for level in levels:
            asyncio.run(drive(server.address, creds, work[: min(200, len(work))], level))  # warm-up
            noop = asyncio.run(noop_rate((serving.key_pem, serving.chain_pem), creds, work, level))
            rate, p50, p99 = asyncio.run(drive(server.address, creds, work, level, args.connections))
            print(
                f"concurrency {level:3d}: {rate:7.0f} CSR/s  p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  "
                f"ratio to floor {rate / floor:4.2f}  (no-op handler {noop:6.0f}/s = {noop / floor:4.2f} of floor)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
