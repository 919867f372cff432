"""``--signer kubernetes-csr`` on the real test control plane: a burst of CSRs through TokenReview and
certificates.k8s.io/v1 CertificateSigningRequests signed by cert-manager's CSR signer for a CA ClusterIssuer.

    make cluster        # or: bash tests/cluster/up.sh
    python bench/bench_csr_api.py [--requests 1000] [--identities 50] [--concurrency 100] [--qps 0]

Starts ``meshsigner serve --signer kubernetes-csr --signer-name clusterissuers.cert-manager.io/<issuer>`` (the
issuer's CA pinned as ``--root-ca-file``, meshsigner approving its own CSRs), then prints the one-at-a-time latency,
the burst's CSR/s, p50/p99 and outcomes, the Kubernetes API requests per CSR by verb and resource (the API server's
own counters, cert-manager included, and meshsigner's), meshsigner's writes and polling reads per CSR (targets: ≤ 3
writes: create, approval, delete; 0 GETs) and the CSRs left afterwards (must be 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_cert_manager import load_plane, measure_burst, report_left, setup  # noqa: E402
from tests.support.processes import start_server  # noqa: E402


def csrs_left(plane, signer_name: str) -> int:  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=plane.kubeconfig)
    try:
        found = client.CertificatesV1Api(api).list_certificate_signing_request(
            label_selector="app.kubernetes.io/managed-by=meshsigner", field_selector=f"spec.signerName={signer_name}"
        )
        return len(found.items)
    finally:
        api.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--qps", type=float, default=0, help="--kube-api-qps (0: rate limiter disabled)")
    args = parser.parse_args()

    plane, pki = load_plane()
    _, issuer, ca, pairs, cleanup, _ = setup(plane, pki, args.identities)
    signer_name = f"clusterissuers.cert-manager.io/{issuer}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-csr-"))
    (workdir / "roots.pem").write_bytes(ca.cert_pem)
    flags = [
        "--signer=kubernetes-csr",
        f"--signer-name={signer_name}",
        "--authenticator=tokenreview",
        f"--kubeconfig={plane.kubeconfig}",
        f"--root-ca-file={workdir / 'roots.pem'}",
        "--serving-signature-algorithm=ECDSA",
        "--serving-certificate-key-size=256",
        "--request-timeout=60s",
        "--certificate-request-timeout=60s",
        "--log-level=warning",
    ]
    flags += (
        [f"--kube-api-qps={args.qps}", f"--kube-api-burst={int(args.qps * 2)}"]
        if args.qps
        else ["--disable-kubernetes-client-rate-limiter"]
    )
    server = start_server(flags, workdir / "serve.log")
    try:
        measure_burst(plane, server, ca, pairs, args, "CertificateSigningRequest")
        report_left(lambda: csrs_left(plane, signer_name), "CertificateSigningRequest")
    finally:
        server.stop()
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
