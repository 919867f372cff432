"""Istio's own CA client (built from istio.io/istio, see tests/istio_peer) against a real serve process.

The peer knows only Istio's proto and code: its CSR generator, its gRPC client with its TLS rules
(ServerName from CAEndpointSAN, TLS ≥ 1.2), its token credential and its response checks (≥ 2 elements).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.conftest import RunningSigner


def _run(
    istio_peer: str, signer: RunningSigner, tmp_path: Path, token: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "istio-token"
    token_file.write_text(token)
    return subprocess.run(
        [
            istio_peer,
            f"--ca-addr={signer.server.address}",
            f"--root-cert={signer.ca_dir / 'root-cert.pem'}",
            f"--token-file={token_file}",
            f"--out-dir={tmp_path}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
def test_istio_client_gets_its_identity(istio_peer, signer, tmp_path, key):
    flags = ["--ns=orders", "--sa=web"] + (["--ecdsa"] if key == "ecdsa" else [])
    result = _run(istio_peer, signer, tmp_path, signer.issuer.token("orders", "web"), *flags)
    assert result.returncode == 0, result.stderr
    chain = json.loads(result.stdout)["certChain"]
    assert len(chain) == 2
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/orders/sa/web"]
    assert chain[-1].encode() == signer.root_pem
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("token_args", "flags", "status"),
    [
        ({"audience": "kubernetes.default.svc"}, ["--ns=orders", "--sa=web"], "Unauthenticated"),
        ({}, ["--ns=orders", "--sa=admin"], "PermissionDenied"),
        ({}, ["--ns=orders", "--sa=web", "--cluster-id=remote"], "Unauthenticated"),
    ],
    ids=["wrong audience", "another identity", "foreign cluster id"],
)
def test_istio_client_is_refused(istio_peer, signer, tmp_path, token_args, flags, status):
    result = _run(istio_peer, signer, tmp_path, signer.issuer.token("orders", "web", **token_args), *flags)
    assert result.returncode != 0
    assert status in result.stderr and not (tmp_path / "cert-chain.pem").exists()
