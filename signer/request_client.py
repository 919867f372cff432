"""``meshsigner request``: asks a CA endpoint for a workload certificate exactly as Istio's agent does.

For people debugging a CA: it makes a key and CSR (one URI SAN, subject "O=", like pilot-agent), sends it with a
bearer token and the ``clusterid`` header over TLS verified against a root file, and writes ``key.pem`` (0600),
``cert-chain.pem`` and ``root-cert.pem``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2

from bridge.pem_files import write_private, write_public
from policies.spiffe import workload_spiffe_id
from proto import istio_ca_pb2, istio_ca_pb2_grpc

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_workload_key(key_type: str = "ecdsa") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: PrivateKey, spiffe_id: str) -> str:
    """pilot-agent's CSR: subject with one empty O, one critical URI SAN, no other extension."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")


def request_metadata(token: str, cluster_id: str | None) -> tuple[tuple[str, str], ...]:
    pairs = [("authorization", f"Bearer {token}")]
    if cluster_id:
        pairs.append(("clusterid", cluster_id))
    return tuple(pairs)


def certificate_request(
    csr_pem: str, validity_seconds: int, *, impersonate: str | None = None, cert_signer: str = ""
) -> istio_ca_pb2.IstioCertificateRequest:
    metadata = struct_pb2.Struct()
    if impersonate:
        metadata.update({"ImpersonatedIdentity": impersonate})
    else:
        metadata.update({"CertSigner": cert_signer})
    return istio_ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=validity_seconds, metadata=metadata)


def secure_channel(address: str, root_pem: bytes, server_name: str | None) -> grpc.aio.Channel:
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_pem), options=options)


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    chain: list[str]

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain[0].encode())

    def summary(self) -> str:
        leaf = self.leaf
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        return (
            f"identity:     {', '.join(uris)}\n"
            f"issuer:       {leaf.issuer.rfc4514_string()}\n"
            f"notAfter:     {leaf.not_valid_after_utc.isoformat()}\n"
            f"chain length: {len(self.chain)} elements (leaf, {len(self.chain) - 2} intermediate(s), root bundle)"
        )


async def request_certificate(
    *,
    address: str,
    root_pem: bytes,
    token: str,
    spiffe_id: str,
    server_name: str | None = None,
    key_type: str = "ecdsa",
    validity_seconds: int = 86400,
    cluster_id: str | None = "Kubernetes",
    impersonate: str | None = None,
    timeout: float = 30.0,
) -> Issued:
    key = new_workload_key(key_type)
    csr = build_csr(key, spiffe_id)
    async with secure_channel(address, root_pem, server_name) as channel:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        response = await stub.CreateCertificate(
            certificate_request(csr, validity_seconds, impersonate=impersonate),
            metadata=request_metadata(token, cluster_id),
            timeout=timeout,
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Issued(key_pem=key_pem, chain=list(response.cert_chain))


def write_outputs(issued: Issued, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_private(out_dir / "key.pem", issued.key_pem)
    write_public(out_dir / "cert-chain.pem", "".join(_ensure_newline(p) for p in issued.chain[:-1]).encode())
    write_public(out_dir / "root-cert.pem", _ensure_newline(issued.chain[-1]).encode())


def _ensure_newline(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="localhost:6443", help="CA endpoint host:port")
    parser.add_argument("--root-cert", required=True, help="PEM root(s) the server certificate must chain to")
    parser.add_argument("--server-name", default=None, help="expected server name (TLS SNI/verification)")
    parser.add_argument("--token-file", required=True, help="file holding the service-account token")
    parser.add_argument("--spiffe-id", default=None, help="identity to request (default from namespace/SA)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--service-account", default="default")
    parser.add_argument("--trust-domain", default="cluster.local")
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    parser.add_argument("--validity", type=int, default=86400, help="requested lifetime in seconds (agent: 24h)")
    parser.add_argument("--cluster-id", default="Kubernetes", help="clusterid header ('' to omit)")
    parser.add_argument("--impersonate", default=None, help="ImpersonatedIdentity metadata (ztunnel)")
    parser.add_argument("--out-dir", default="out", help="where key.pem, cert-chain.pem, root-cert.pem go")
    parser.add_argument("--timeout", type=float, default=30.0)


async def run_request(args: argparse.Namespace) -> int:
    spiffe_id = args.spiffe_id or workload_spiffe_id(args.trust_domain, args.namespace, args.service_account)
    try:
        issued = await request_certificate(
            address=args.address,
            root_pem=Path(args.root_cert).read_bytes(),
            token=Path(args.token_file).read_text().strip(),
            spiffe_id=spiffe_id,
            server_name=args.server_name,
            key_type=args.key_type,
            validity_seconds=args.validity,
            cluster_id=args.cluster_id or None,
            impersonate=args.impersonate,
            timeout=args.timeout,
        )
    except grpc.aio.AioRpcError as exc:
        print(f"request refused: {exc.code().name}: {exc.details()}")
        return 1
    except OSError as exc:
        print(f"cannot read input: {exc}")
        return 2
    write_outputs(issued, Path(args.out_dir))
    print(issued.summary())
    print(f"written:      {args.out_dir}/key.pem, cert-chain.pem, root-cert.pem")
    return 0
