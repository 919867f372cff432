"""Starting ``meshsigner serve`` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from proto import istio_ca_pb2_grpc
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SERVER_NAME = "cert-manager-istio-csr.cert-manager.svc"  # istio-csr's default serving DNS name


def local_signer_flags(base: Path, token_issuer: TokenIssuer) -> list[str]:
    """serve on the local CA in ``base/ca`` with offline JWKS authentication of ``token_issuer``'s tokens."""
    return [
        "--signer=local",
        f"--local-ca-dir={base / 'ca'}",
        "--authenticator=jwks",
        f"--jwks-file={token_issuer.write_jwks(base / 'jwks.json')}",
        f"--token-issuer={token_issuer.issuer}",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    readiness_port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stub(
        self, root_pem: bytes, server_name: str = SERVER_NAME, *, own_connection: bool = False
    ) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
        """A CA client over TLS trusting ``root_pem``, expecting the serving certificate's DNS name. With
        ``own_connection``, it shares no TCP connection with other stubs (so ``--workers`` processes each get some)."""
        options: list[tuple[str, str | int]] = [("grpc.ssl_target_name_override", server_name)]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        channel = grpc.secure_channel(self.address, grpc.ssl_channel_credentials(root_certificates=root_pem), options)
        return istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)

    def metric(self, sample: str) -> float:
        """The value of one exposition sample, e.g. ``name{label="x"}``; 0 when it has no sample yet."""
        for line in self.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return response.read().decode()

    def ready(self) -> bool:
        """Whether /readyz answers 200; raises when the process has exited (it never will be)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log()}")
        try:
            return readyz(self.readiness_port)[0] == 200
        except OSError:
            return False

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    flags: list[str], log_path: Path, *, env: dict[str, str] | None = None, wait: bool = True
) -> ServerProcess:
    grpc_port, readiness_port, metrics_port = free_port(), free_port(), free_port()
    # Cluster duties (the Lease, root ConfigMaps in every namespace, istiod's certificate) would make every test
    # server on the shared plane compete for the default Lease and write its own roots everywhere: only the tests
    # that ask for them (by a duty or leader-election flag) get them.
    if not any(flag.startswith(("--cluster-duties", "--leader-election-")) for flag in flags):
        flags = [*flags, "--cluster-duties=false"]
    command = [
        sys.executable, "-m", "signer.cli", "serve",
        f"--serving-address=127.0.0.1:{grpc_port}",
        f"--readiness-probe-port={readiness_port}",
        f"--metrics-port={metrics_port}",
        *flags,
    ]  # fmt: skip
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    server = ServerProcess(process, grpc_port, readiness_port, metrics_port, log_path)
    if wait:
        try:
            wait_for(lambda: server.ready(), "serve ready", timeout=60)
        except AssertionError:
            server.stop()
            raise RuntimeError(f"serve did not become ready:\n{server.log()}") from None
    return server
