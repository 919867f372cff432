"""Soak: ``meshsigner serve --signer local --authenticator jwks`` at a steady request rate for a long time, its RSS
and open file descriptors sampled every few seconds; fails when either keeps growing.

    python bench/soak.py [--minutes 30] [--rate 20] [--sample-seconds 5] [--warmup-seconds 60]
                         [--max-rss-slope-mib-per-hour 8] [--max-fd-growth 4] [--json out.json]

The client sends ``--rate`` CreateCertificate calls a second, spread over a few long-lived connections and a
rotating set of workloads (new tokens keep the token cache at its steady size). After the warm-up (allocator
arenas, caches, the first connections) the RSS samples get a least-squares slope, which must stay under the bound,
and the fd count may not rise more than ``--max-fd-growth`` above its post-warm-up minimum. Prints a summary and
the sampled curve (one row per sample); exit status 1 when a bound is broken or a request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proto import istio_ca_pb2, istio_ca_pb2_grpc
from tests.support.csr_builder import make_csr
from tests.support.processes import SERVER_NAME, local_signer_flags, start_server
from tests.support.tokens import TokenIssuer

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sample:
    seconds: float
    rss_mib: float
    fds: int
    sent: int


@dataclass
class SoakResult:
    minutes: float
    rate: float
    sent: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_slope_mib_per_hour: float = 0.0
    fd_min: int = 0
    fd_max: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS (MiB) over time, scaled to an hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(s.seconds for s in samples) / n
    mean_r = sum(s.rss_mib for s in samples) / n
    var = sum((s.seconds - mean_t) ** 2 for s in samples)
    if var == 0:
        return 0.0
    cov = sum((s.seconds - mean_t) * (s.rss_mib - mean_r) for s in samples)
    return cov / var * 3600


def run(
    minutes: float,
    rate: float,
    sample_seconds: float,
    warmup_seconds: float,
    max_rss_slope: float,
    max_fd_growth: int,
    connections: int = 4,
    workdir: Path | None = None,
) -> SoakResult:
    result = SoakResult(minutes=minutes, rate=rate)
    with tempfile.TemporaryDirectory(prefix="meshsigner-soak-") as tmp:
        base = workdir or Path(tmp)
        issuer = TokenIssuer()
        server = start_server([*local_signer_flags(base, issuer), "--log-format=json"], base / "serve.log")
        try:
            _drive(server, issuer, base, result, minutes, rate, sample_seconds, connections)
        finally:
            code = server.stop()
            if code != 0:
                result.failures.append(f"serve exited with {code}")
    judge(result, warmup_seconds, max_rss_slope, max_fd_growth)
    return result


def _drive(server, issuer, base, result, minutes, rate, sample_seconds, connections) -> None:
    root = (base / "ca" / "root-cert.pem").read_bytes()
    channels = [
        grpc.secure_channel(
            server.address,
            grpc.ssl_channel_credentials(root_certificates=root),
            options=[("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(connections)
    ]
    stubs = [istio_ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]
    csrs = [make_csr([f"spiffe://cluster.local/ns/soak{i}/sa/sa{i}"]) for i in range(20)]
    # 200 tokens minted once and reused: a token minted per call (its iat changes every second) would fill the
    # server's token cache to its 20,000-entry cap (~14 MiB, ~20 minutes at 20/s) and measure that instead
    tokens = [
        issuer.token(f"soak{i % 20}", f"sa{i % 20}", lifetime=48 * 3600, extra={"jti": str(i)}) for i in range(200)
    ]
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    pending = threading.BoundedSemaphore(64)  # at most this many outstanding: a stalled server shows as failures
    pid = server.process.pid
    started = time.monotonic()
    end = started + minutes * 60
    next_sample = started
    sent = 0

    def done(future: grpc.Future) -> None:
        try:
            future.result()
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        with lock:
            codes[code] += 1
        pending.release()

    while (now := time.monotonic()) < end:
        if now >= next_sample:
            result.samples.append(Sample(round(now - started, 1), round(rss_mib(pid), 2), open_fds(pid), sent))
            next_sample += sample_seconds
        due = started + sent / rate
        if now < due:
            time.sleep(min(due - now, max(0.0, next_sample - now)))
            continue
        index = sent % len(csrs)
        token = tokens[(sent % 10) * 20 + index]  # the workload's own token (index = i % 20)
        request = istio_ca_pb2.IstioCertificateRequest(csr=csrs[index], validity_duration=3600)
        if not pending.acquire(timeout=30):
            with lock:
                codes["CLIENT_BACKLOG"] += 1
            break
        future = stubs[sent % len(stubs)].CreateCertificate.future(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=20
        )
        future.add_done_callback(done)
        sent += 1
    for _ in range(64):
        pending.acquire(timeout=30)
    result.samples.append(Sample(round(time.monotonic() - started, 1), round(rss_mib(pid), 2), open_fds(pid), sent))
    for channel in channels:
        channel.close()
    result.sent = sent
    result.codes = dict(codes)


def judge(result: SoakResult, warmup_seconds: float, max_rss_slope: float, max_fd_growth: int) -> None:
    steady = [s for s in result.samples if s.seconds >= warmup_seconds] or result.samples
    if not steady:
        result.failures.append("no samples")
        return
    result.rss_start_mib, result.rss_end_mib = steady[0].rss_mib, steady[-1].rss_mib
    result.rss_max_mib = max(s.rss_mib for s in steady)
    result.rss_slope_mib_per_hour = round(slope_per_hour(steady), 2)
    result.fd_min, result.fd_max = min(s.fds for s in steady), max(s.fds for s in steady)
    bad = {k: v for k, v in result.codes.items() if k != "OK"}
    if bad:
        result.failures.append(f"requests failed: {bad}")
    if result.codes.get("OK", 0) < result.sent:
        result.failures.append(f"only {result.codes.get('OK', 0)} of {result.sent} answered OK")
    if result.rss_slope_mib_per_hour > max_rss_slope:
        result.failures.append(
            f"RSS grows {result.rss_slope_mib_per_hour:.1f} MiB/h after warm-up (bound {max_rss_slope} MiB/h)"
        )
    if result.fd_max - result.fd_min > max_fd_growth:
        result.failures.append(f"open fds went from {result.fd_min} to {result.fd_max} (bound +{max_fd_growth})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="CreateCertificate calls per second")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=60.0)
    parser.add_argument("--max-rss-slope-mib-per-hour", type=float, default=8.0)
    parser.add_argument("--max-fd-growth", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the result (with every sample) here")
    args = parser.parse_args(argv)
    result = run(
        args.minutes,
        args.rate,
        args.sample_seconds,
        args.warmup_seconds,
        args.max_rss_slope_mib_per_hour,
        args.max_fd_growth,
    )
    print("seconds  rss_mib  fds  sent")
    for s in result.samples:
        print(f"{s.seconds:7.1f}  {s.rss_mib:7.2f}  {s.fds:3d}  {s.sent}")
    summary = {k: v for k, v in asdict(result).items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    print("PASS" if result.passed else "FAIL: " + "; ".join(result.failures))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
