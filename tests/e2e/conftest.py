"""A real ``meshsigner serve`` process (local CA, offline JWKS) shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from proto import istio_ca_pb2_grpc
from tests.support.processes import SERVER_NAME, ServerProcess, local_signer_flags, start_server
from tests.support.tokens import TokenIssuer


@dataclass
class RunningSigner:
    server: ServerProcess
    issuer: TokenIssuer
    ca_dir: Path
    jwks_path: Path

    @property
    def root_pem(self) -> bytes:
        return (self.ca_dir / "root-cert.pem").read_bytes()

    def channel(self, server_name: str = SERVER_NAME) -> grpc.Channel:
        return grpc.secure_channel(
            self.server.address,
            grpc.ssl_channel_credentials(root_certificates=self.root_pem),
            options=[("grpc.ssl_target_name_override", server_name)],
        )

    def stub(self) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
        return istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel())


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer) -> Iterator[RunningSigner]:
    base = tmp_path_factory.mktemp("signer")
    server = start_server(
        [
            *local_signer_flags(base, token_issuer),
            "--ca-trusted-node-accounts=istio-system/ztunnel",
            "--log-format=json",
            f"--decision-log={base / 'decisions.jsonl'}",
        ],
        base / "serve.log",
    )
    yield RunningSigner(server, token_issuer, base / "ca", base / "jwks.json")
    assert server.stop() == 0, server.log()
