"""cert-manager mode on the real test control plane: a burst of CSRs through TokenReview and CertificateRequests.

    make cluster        # or: bash tests/cluster/up.sh
    python bench/bench_cert_manager.py [--requests 1000] [--identities 50] [--concurrency 100]
                                       [--no-approve] [--qps 0] [--mirror off|on|both]

``--mirror both`` (the default) runs the burst twice, each on a fresh server: without and with
``--mirror-certificate-signing-requests``, and prints the p99 difference (target: the mirror adds ≤ 10 %) and the
mirror's own writes and drops.

Starts ``meshsigner serve --signer cert-manager --authenticator tokenreview`` against the plane (a CA ClusterIssuer
made for the run, pinned root file, ``--approve-certificate-requests`` unless ``--no-approve``, in which case
nobody approves and every request times out: only useful with an approver running), then:
- one-at-a-time issuance latency (20 requests, p50/p99);
- the burst: CSR/s, p50/p99, outcome counts;
- Kubernetes API requests per CSR, from the API server's own ``apiserver_request_total`` (scraped before/after
  with the admin client certificate; these include cert-manager's own calls) and from meshsigner's
  ``meshsigner_kube_api_requests_total`` (meshsigner's calls only);
- CertificateRequests left in the namespace afterwards (must be 0);
- process CPU per CSR (utime+stime from /proc/PID/stat, children included) of meshsigner, the kube-apiserver,
  cert-manager's controller and etcd: over the burst alone, and over the burst plus the 2 s after it (meshsigner's
  background deletes land then);
- start-up: from spawning ``meshsigner serve`` to /readyz answering 200 (polled every 5 ms), and to the first
  certificate issued (one request sent the moment /readyz is 200); ``--starts N`` adds N start/stop cycles that
  measure only that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_vs_istiod import tree_cpu_seconds  # noqa: E402  # the same /proc accounting as the side-by-side bench

from proto import istio_ca_pb2, istio_ca_pb2_grpc  # noqa: E402
from tests.support.csr_builder import make_csr  # noqa: E402
from tests.support.processes import start_server  # noqa: E402

SERVER_NAME = "cert-manager-istio-csr.cert-manager.svc"
CM = ("cert-manager.io", "v1")
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


PLANE_PROCESSES = ("kube-apiserver", "cm-controller", "etcd")


def cpu_snapshot(plane, server) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """CPU seconds so far of meshsigner and of each plane process (each with its children)."""
    snapshot = {"meshsigner": tree_cpu_seconds(server.process.pid)}
    for name in PLANE_PROCESSES:
        snapshot[name] = tree_cpu_seconds(plane.procs[name].pid)
    return snapshot


def print_cpu(n: int, before: dict[str, float], burst_end: dict[str, float], settled: dict[str, float]) -> None:
    print("process CPU per CSR (utime+stime, children included): burst only / burst + 2 s settle:")
    for name in before:
        print(
            f"  {name:15} {(burst_end[name] - before[name]) / n * 1000:6.2f} ms / "
            f"{(settled[name] - before[name]) / n * 1000:6.2f} ms"
        )


def load_plane():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("meshsigner_testplane", REPO / "tests" / "cluster" / "plane.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["meshsigner_testplane"] = module
    spec.loader.exec_module(module)
    plane = module.load()
    if plane is None or not plane.healthy():
        sys.exit("no running test control plane: start one with `make cluster`")
    return plane, module.pki


def scrape_apiserver(plane) -> Counter[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(verb, resource, subresource) → requests, summed over codes, from the API server's own /metrics."""
    context = ssl.create_default_context(cafile=plane.ca_cert_path)
    context.load_cert_chain(plane.admin_cert_path, plane.admin_key_path)
    with urllib.request.urlopen(f"{plane.api_server_url}/metrics", context=context, timeout=10) as response:
        text = response.read().decode()
    totals: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") in ("certificaterequests", "certificatesigningrequests", "tokenreviews"):
            totals[(labels["verb"], labels["resource"], labels.get("subresource", ""))] += int(float(match["value"]))
    return totals


def scrape_meshsigner(server) -> Counter[tuple[str, str]]:  # type: ignore[no-untyped-def]
    totals: Counter[tuple[str, str]] = Counter()
    for line in server.metrics().splitlines():
        if line.startswith("meshsigner_kube_api_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            totals[(labels["verb"], labels["resource"])] += int(float(line.rsplit(" ", 1)[1]))
    return totals


def print_api_calls(n: int, api_before, api_after, own_before, own_after) -> None:  # type: ignore[no-untyped-def]
    print("API server's apiserver_request_total delta (all clients, cert-manager included), per CSR:")
    for key in sorted(set(api_after) | set(api_before)):
        delta = api_after[key] - api_before[key]
        if delta:
            verb, resource, sub = key
            print(f"  {verb:7} {resource + ('/' + sub if sub else ''):40} {delta:6d}  {delta / n:.3f}/CSR")
    print("meshsigner's own Kubernetes calls (meshsigner_kube_api_requests_total delta), per CSR:")
    for key in sorted(set(own_after) | set(own_before)):
        delta = own_after[key] - own_before[key]
        if delta:
            print(f"  {key[0]:7} {key[1]:40} {delta:6d}  {delta / n:.3f}/CSR")


def own_writes_and_reads(n: int, resources: tuple[str, ...], own_before, own_after) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """meshsigner's writes (create, update, delete) and GETs per CSR on ``resources`` (and their subresources)."""

    def ours(resource: str) -> bool:
        return resource.split("/")[0] in resources

    writes = sum(
        own_after[k] - own_before[k] for k in own_after if k[0] in ("create", "update", "delete") and ours(k[1])
    )
    reads = sum(own_after[k] - own_before[k] for k in own_after if k[0] == "get" and ours(k[1]))
    return writes / n, reads / n


def setup(plane, pki, identities: int):  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=plane.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    suffix = secrets.token_hex(3)
    cr_ns, wl_ns = f"bench-istio-{suffix}", f"bench-wl-{suffix}"
    for ns in (cr_ns, wl_ns):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    ca = pki.make_ca(f"bench-{suffix}")
    core.create_namespaced_secret(
        plane.cluster_resource_namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"bench-{suffix}-ca"),
            type="kubernetes.io/tls",
            data={"tls.crt": base64.b64encode(ca.cert_pem).decode(), "tls.key": base64.b64encode(ca.key_pem).decode()},
        ),
    )
    issuer = f"bench-{suffix}"
    custom.create_cluster_custom_object(
        *CM,
        "clusterissuers",
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": issuer},
            "spec": {"ca": {"secretName": f"bench-{suffix}-ca"}},
        },
    )
    deadline = time.monotonic() + 60
    while True:
        obj = custom.get_cluster_custom_object(*CM, "clusterissuers", issuer)
        if any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", [])):
            break
        if time.monotonic() > deadline:
            sys.exit("the bench ClusterIssuer did not become Ready")
        time.sleep(0.25)
    pairs = []
    for index in range(identities):
        sa = f"sa-{index}"
        core.create_namespaced_service_account(wl_ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa)))
        spec = client.V1TokenRequestSpec(audiences=["istio-ca"], expiration_seconds=3600)
        token = core.create_namespaced_service_account_token(
            sa, wl_ns, client.AuthenticationV1TokenRequest(spec=spec)
        ).status.token
        pairs.append((make_csr([f"spiffe://cluster.local/ns/{wl_ns}/sa/{sa}"]), token))

    def cleanup() -> None:
        for call in (
            lambda: custom.delete_cluster_custom_object(*CM, "clusterissuers", issuer),
            lambda: core.delete_namespaced_secret(f"bench-{suffix}-ca", plane.cluster_resource_namespace),
            lambda: core.delete_namespace(cr_ns),
            lambda: core.delete_namespace(wl_ns),
        ):
            try:
                call()
            except Exception as exc:  # best effort
                print(f"cleanup: {exc}", file=sys.stderr)

    def left() -> int:
        return len(
            custom.list_namespaced_custom_object(
                *CM, cr_ns, "certificaterequests", label_selector="app.kubernetes.io/managed-by=meshsigner"
            )["items"]
        )

    return cr_ns, issuer, ca, pairs, cleanup, left


async def run_burst(address: str, roots: bytes, pairs, total: int, concurrency: int):  # type: ignore[no-untyped-def]
    channel = grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(roots), options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )
    stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    codes: Counter[str] = Counter()

    async def one(index: int) -> None:
        csr, token = pairs[index % len(pairs)]
        request = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
        async with slots:
            started = time.perf_counter()
            try:
                await stub.CreateCertificate(request, metadata=[("authorization", f"Bearer {token}")], timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - started
    await channel.close()
    return elapsed, latencies, codes


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no-approve", action="store_true", help="do not pass --approve-certificate-requests")
    parser.add_argument("--qps", type=float, default=0, help="--kube-api-qps (0: rate limiter disabled)")
    parser.add_argument("--mirror", choices=("off", "on", "both"), default="both", help="the audit mirror")
    parser.add_argument("--log-level", default="warning", help="meshsigner's --log-level (its logs stay in a temp dir)")
    parser.add_argument("--starts", type=int, default=0, help="extra start/stop cycles measuring only start-up")
    parser.add_argument(
        "--py-spy", metavar="FILE", default="", help="record meshsigner with py-spy during the burst (raw format)"
    )
    args = parser.parse_args()

    plane, pki = load_plane()
    cr_ns, issuer, ca, pairs, cleanup, left = setup(plane, pki, args.identities)
    workdir = Path(tempfile.mkdtemp(prefix="bench-cm-"))
    (workdir / "roots.pem").write_bytes(ca.cert_pem)
    flags = [
        "--signer=cert-manager",
        "--authenticator=tokenreview",
        f"--kubeconfig={plane.kubeconfig}",
        f"--certificate-namespace={cr_ns}",
        f"--issuer-name={issuer}",
        "--issuer-kind=ClusterIssuer",
        f"--root-ca-file={workdir / 'roots.pem'}",
        "--serving-signature-algorithm=ECDSA",
        "--serving-certificate-key-size=256",
        "--request-timeout=60s",
        "--certificate-request-timeout=60s",
        f"--log-level={args.log_level}",
    ]
    flags += [] if args.no_approve else ["--approve-certificate-requests"]
    flags += (
        [f"--kube-api-qps={args.qps}", f"--kube-api-burst={int(args.qps * 2)}"]
        if args.qps
        # no limit on the workload path; the audit mirror's own share (always enforced) is 20 % of 500 QPS
        else ["--disable-kubernetes-client-rate-limiter", "--kube-api-qps=500", "--kube-api-burst=1000"]
    )
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.mirror]
    p99s: dict[bool, float] = {}
    try:
        for mirror in modes:
            extra = ["--mirror-certificate-signing-requests", f"--mirror-signer-name=meshsigner.io/bench-{cr_ns}"]
            print(f"\n=== mirror {'on' if mirror else 'off'} ===")
            p99s[mirror] = measure(plane, flags + (extra if mirror else []), workdir, ca, pairs, args, left, mirror)
        if args.starts:
            measure_starts(flags, workdir, ca, pairs, args.starts)
    finally:
        cleanup()
    if len(p99s) == 2:
        print(f"\nmirror on vs off: workload p99 {p99s[True] * 1000:.0f} ms vs {p99s[False] * 1000:.0f} ms "
              f"({(p99s[True] / p99s[False] - 1) * 100:+.1f} %)")  # fmt: skip
    return 0


def delete_mirrors(plane, signer_name: str) -> None:  # type: ignore[no-untyped-def]
    """The bench's audit mirrors are not kept for their retention hour."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=plane.kubeconfig)
    client.CertificatesV1Api(api).delete_collection_certificate_signing_request(
        label_selector="meshsigner.io/purpose=audit", field_selector=f"spec.signerName={signer_name}"
    )
    api.close()


def measure_burst(plane, server, ca, pairs, args, kind: str):  # type: ignore[no-untyped-def]
    """On a running server: the sequential run and the burst, with their latencies, the API calls per CSR and
    meshsigner's writes and polling reads of ``kind`` (CertificateRequest or CertificateSigningRequest); returns the
    burst's p99 and meshsigner's own API counters before and after it."""
    # one at a time: the latency of a single issuance with nothing else going on
    single = asyncio.run(run_burst(server.address, ca.cert_pem, pairs, 20, 1))[1]
    print(
        f"sequential issuance (20): p50 {statistics.median(single) * 1000:.0f} ms, "
        f"p99 {percentile(single, 0.99) * 1000:.0f} ms"
    )

    api_before, own_before = scrape_apiserver(plane), scrape_meshsigner(server)
    profiler = start_profiler(args.py_spy, server.process.pid)
    cpu_before = cpu_snapshot(plane, server)
    elapsed, latencies, codes = asyncio.run(
        run_burst(server.address, ca.cert_pem, pairs, args.requests, args.concurrency)
    )
    cpu_burst_end = cpu_snapshot(plane, server)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        profiler.wait(30)
    time.sleep(2)  # let the background deletes (and mirror writes) land before counting
    cpu_settled = cpu_snapshot(plane, server)
    api_after, own_after = scrape_apiserver(plane), scrape_meshsigner(server)
    p99 = percentile(latencies, 0.99)
    print(
        f"burst: {args.requests} CSRs from {args.identities} identities at concurrency {args.concurrency}: "
        f"{elapsed:.1f}s, {args.requests / elapsed:.1f} CSR/s, p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, outcomes {dict(codes)}"
    )
    n = args.requests
    print_cpu(n, cpu_before, cpu_burst_end, cpu_settled)
    print_api_calls(n, api_before, api_after, own_before, own_after)
    writes, reads = own_writes_and_reads(n, (f"{kind.lower()}s",), own_before, own_after)
    print(f"meshsigner {kind} writes per CSR: {writes:.2f}; polling reads (GET) per CSR: {reads:.2f}")
    return p99, own_before, own_after


def report_left(left, kind: str) -> None:  # type: ignore[no-untyped-def]
    """Waits up to 30 s for meshsigner's background deletes, then prints how many ``kind`` objects remain."""
    deadline = time.monotonic() + 30
    while (remaining := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"{kind}s left behind: {remaining}")


def start_profiler(output: str, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` into ``output`` (``--gil``: only the thread holding the GIL, so samples follow
    the Python CPU rather than threads blocked in I/O), or None without ``output``."""
    if not output:
        return None
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw", "--gil"]
    profiler = subprocess.Popen([*command, "--rate", "200", "--output", output], stdout=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches before the burst starts
    return profiler


def compiled_bytecode(workdir: Path) -> dict[str, str]:
    """The environment of a ``serve`` that starts from compiled bytecode, as the image's does (it is compiled at
    build time); from the source tree with PYTHONDONTWRITEBYTECODE, every start would compile meshsigner's own
    modules again (about 150 ms here). Compiled once now, into a cache of the run's own."""
    env = {"PYTHONPYCACHEPREFIX": str(workdir / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}
    warm = "import signer.cli, signer.serve, signer.serve_in_cluster"
    subprocess.run([sys.executable, "-c", warm], cwd=REPO, env={**os.environ, **env}, check=True)
    return env


def start_timed(flags, log_path: Path, ca, pairs):  # type: ignore[no-untyped-def]
    """Start ``meshsigner serve`` (from compiled bytecode); returns the server, the seconds from spawning it to
    /readyz 200 and to the first certificate (one request sent as soon as it is ready)."""
    env = compiled_bytecode(log_path.parent)
    started = time.monotonic()
    server = start_server(flags, log_path, wait=False, env=env)
    deadline = started + 60
    while not server.ready():
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"serve did not become ready:\n{server.log()}")
        time.sleep(0.005)
    ready = time.monotonic() - started
    codes = asyncio.run(run_burst(server.address, ca.cert_pem, pairs, 1, 1))[2]
    first = time.monotonic() - started
    if codes.get("OK") != 1:
        print(f"first request after ready: {dict(codes)}")
    return server, ready, first


def measure_starts(flags, workdir: Path, ca, pairs, starts: int) -> None:  # type: ignore[no-untyped-def]
    readies, firsts = [], []
    for index in range(starts):
        server, ready, first = start_timed(flags, workdir / f"serve-start-{index}.log", ca, pairs)
        server.stop()
        if server.process.returncode not in (0, -15):
            print(f"serve exited with {server.process.returncode}")
        readies.append(ready)
        firsts.append(first)
    print(
        f"\nstart-up over {starts} starts: ready {' '.join(f'{r * 1000:.0f}' for r in readies)} ms "
        f"(median {statistics.median(readies) * 1000:.0f}); first certificate "
        f"{' '.join(f'{f * 1000:.0f}' for f in firsts)} ms (median {statistics.median(firsts) * 1000:.0f})"
    )


def measure(plane, flags, workdir: Path, ca, pairs, args, left, mirror: bool) -> float:  # type: ignore[no-untyped-def]
    """One server, the sequential run and the burst; returns the burst's p99."""
    server, ready, first = start_timed(flags, workdir / f"serve-{'mirror' if mirror else 'plain'}.log", ca, pairs)
    print(f"start-up: ready {ready * 1000:.0f} ms, first certificate {first * 1000:.0f} ms after spawning serve")
    try:
        p99, own_before, own_after = measure_burst(plane, server, ca, pairs, args, "CertificateRequest")
        if mirror:
            n = args.requests
            mirror_writes, _ = own_writes_and_reads(n, ("certificatesigningrequests",), own_before, own_after)
            written = sum(
                server.metric(f'meshsigner_mirror_written_total{{decision="{d}"}}') for d in ("allowed", "denied")
            )
            dropped = sum(server.metric(f'meshsigner_mirror_dropped_total{{reason="{r}"}}')
                          for r in ("queue_full", "no_csr", "api_error"))  # fmt: skip
            queued = server.metric("meshsigner_mirror_queued")
            print(
                f"audit mirror 2 s after the burst: {written:.0f} written, {queued:.0f} still queued (written later, "
                f"at the mirror's own API share), {dropped:.0f} dropped; {mirror_writes:.2f} mirror writes/CSR so far"
            )
            drain_started = time.monotonic()
            while server.metric("meshsigner_mirror_queued") and time.monotonic() - drain_started < 300:
                time.sleep(1)
            total_written = server.metric('meshsigner_mirror_written_total{decision="allowed"}')
            print(
                f"audit mirror backlog drained in {time.monotonic() - drain_started:.0f}s after the burst; "
                f"{total_written:.0f} mirrors written in all"
            )
            delete_mirrors(plane, next(f for f in flags if f.startswith("--mirror-signer-name=")).split("=", 1)[1])
        report_left(left, "CertificateRequest")
        return p99
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
