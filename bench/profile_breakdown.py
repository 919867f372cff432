"""Where meshsigner's CPU goes per CreateCertificate, from py-spy's collapsed stacks (``--format raw``).

    python bench/profile_breakdown.py STACKS.txt [MORE.txt ...] [--top 25]

Each sampled stack is given to the first part whose rule matches, walking from the innermost frame outwards, so
time in a library (cryptography, PyJWT, protobuf, loguru, prometheus_client) is booked to the part that called it
only when the library itself has no part of its own. Prints the share of samples per part, and the hottest
innermost frames for the largest parts. py-spy's non-blocking mode sees Python frames only: a sample whose
innermost frame is the event loop running a callback is inside grpc.aio's Cython layer or gRPC core, and is
booked as such (use perf for the split by shared object).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# (part, pattern on one frame "function (path:line)"); first match from the innermost frame wins.
RULES: list[tuple[str, re.Pattern[str]]] = [
    (part, re.compile(pattern))
    for part, pattern in [
        ("logs", r"loguru/|signer/logs\.py"),
        ("metrics", r"prometheus_client/|signer/metrics\.py|bridge/metrics\.py"),
        ("decision records", r"signer/decision_log\.py"),
        ("token (JWT verify, claims)", r"jwt/|signer/auth/"),
        ("policy", r"policies/"),
        ("CSR parse and checks", r"signer/csr_checks\.py|signer/issued_checks\.py"),
        ("leaf build and sign", r"bridge/local_ca\.py|bridge/signing\.py"),
        ("protobuf", r"google/protobuf|istio_ca_pb2"),
        ("handler glue (service.py)", r"signer/service\.py"),
        ("TLS (OpenSSL/BoringSSL in gRPC core)", r"\b(ssl|SSL|tls|tsi_|aes|gcm|sha256|EVP_|bssl::)"),
        ("gRPC core and HTTP/2", r"grpc_core|grpc_chttp2|chttp2|grpc_|_cygrpc|grpc/_cython|grpc/aio|grpc/_|cygrpc"),
        # A sample whose innermost Python frame is the event loop running a callback, or a bare thread, is inside
        # compiled code with no Python frame of its own: for this server that is grpc.aio's Cython layer and gRPC
        # core (HTTP/2 framing, BoringSSL, completion queue), or a coroutine step.
        ("gRPC aio callbacks (Cython + C core, no Python frame)", r"^Handle\._run \(asyncio/events\.py"),
        ("gRPC poller thread (Cython + C core)", r"^Thread\.run \(threading\.py"),
        ("event loop wait (epoll)", r"^EpollSelector\.select"),
        ("asyncio event loop (Python)", r"asyncio/|selectors\.py|uvloop"),
    ]
]


def part_of(frames: list[str]) -> tuple[str, str]:
    for frame in reversed(frames):
        for part, pattern in RULES:
            if pattern.search(frame):
                return part, frames[-1]
    return "other", frames[-1] if frames else "?"


def read_stacks(paths: list[Path]) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=6, help="innermost frames shown per part")
    args = parser.parse_args()
    stacks = read_stacks(args.stacks)
    total = sum(stacks.values())
    if not total:
        raise SystemExit("no samples")
    parts: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for frames, count in stacks.items():
        part, leaf = part_of(list(frames))
        parts[part] += count
        leaves[part][leaf] += count
    print(f"{total} samples")
    for part, count in parts.most_common():
        print(f"{100 * count / total:5.1f} %  {part}")
        for leaf, leaf_count in leaves[part].most_common(args.top):
            print(f"           {100 * leaf_count / total:5.1f} %  {leaf[:110]}")


if __name__ == "__main__":
    main()
