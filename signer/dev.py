"""``meshsigner dev``: the embedded default for a laptop. No cluster: a local CA and a development token issuer
in a state folder, the signer started on them, and one certificate requested to show it working."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.local_ca import LocalCA
from bridge.pem_files import write_private, write_public
from signer.request_client import request_certificate, write_outputs

DEV_ISSUER = "https://meshsigner.dev/token-issuer"
DEV_KID = "meshsigner-dev"
SERVER_NAME = "cert-manager-istio-csr.cert-manager.svc"


def ensure_dev_issuer(directory: Path) -> ec.EllipticCurvePrivateKey:
    """An ES256 key and its JWKS; kept across runs so tokens minted earlier keep working."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "issuer-key.pem"
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": DEV_KID, "use": "sig", "alg": "ES256"})
    write_public(directory / "jwks.json", json.dumps({"keys": [jwk]}, indent=2).encode())
    return key


def mint_dev_token(
    key: ec.EllipticCurvePrivateKey, namespace: str, service_account: str, *, lifetime: int = 43200
) -> str:
    """A token shaped like a projected service-account token (audience istio-ca, 12 h)."""
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": ["istio-ca"],
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account, "uid": "dev"}},
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": DEV_KID})


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"meshsigner serve exited with {process.returncode}; see its log above")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"meshsigner serve did not become ready at {url} within {timeout:.0f}s")


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=".state/dev", help="where the CA, issuer and tokens live")
    parser.add_argument("--port", type=int, default=6443, help="gRPC port on 127.0.0.1")
    parser.add_argument("--readiness-probe-port", type=int, default=6060)
    parser.add_argument("--metrics-port", type=int, default=9402)
    parser.add_argument("--namespace", default="demo", help="namespace of the demo workload token")
    parser.add_argument("--service-account", default="demo", help="service account of the demo workload token")
    parser.add_argument("--once", action="store_true", help="stop after the demo request")


def run_dev(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    ca = LocalCA.open(state / "ca")
    key = ensure_dev_issuer(state / "issuer")
    token_file = state / "tokens" / f"{args.namespace}.{args.service_account}.jwt"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(token_file, mint_dev_token(key, args.namespace, args.service_account).encode())
    command = [
        sys.executable, "-m", "signer.cli", "serve",
        "--signer=local", f"--local-ca-dir={state / 'ca'}",
        "--authenticator=jwks", f"--jwks-file={state / 'issuer' / 'jwks.json'}", f"--token-issuer={DEV_ISSUER}",
        f"--serving-address=127.0.0.1:{args.port}",
        f"--readiness-probe-port={args.readiness_probe_port}", f"--metrics-port={args.metrics_port}",
        "--serving-signature-algorithm=ECDSA", "--serving-certificate-key-size=256",
    ]  # fmt: skip
    print("$ " + " ".join(command[2:]).replace("signer.cli", "meshsigner"), flush=True)
    server = subprocess.Popen(command)
    try:
        _wait_ready(f"http://127.0.0.1:{args.readiness_probe_port}/readyz", server)
        root_file = state / "ca" / "root-cert.pem"
        issued = asyncio.run(
            request_certificate(
                address=f"127.0.0.1:{args.port}",
                root_pem=root_file.read_bytes(),
                token=token_file.read_text(),
                spiffe_id=f"spiffe://cluster.local/ns/{args.namespace}/sa/{args.service_account}",
                server_name=SERVER_NAME,
            )
        )
        write_outputs(issued, state / "out")
        print("\nmeshsigner issued a workload certificate:\n" + issued.summary(), flush=True)
        print(
            "\nAsk for another one yourself:\n"
            f"  .venv/bin/meshsigner request --address 127.0.0.1:{args.port} --root-cert {root_file} "
            f"--server-name {SERVER_NAME} --token-file {token_file} "
            f"--namespace {args.namespace} --service-account {args.service_account} --out-dir {state / 'out'}\n"
            f"CA root: {root_file} (expires {ca.ca_not_after:%Y-%m-%d}). Ctrl-C stops the signer.",
            flush=True,
        )
        if not args.once:
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(15)
    return 0
