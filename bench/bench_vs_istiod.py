"""meshsigner's local CA against istiod's own CA server, side by side, in one run on loopback.

    python bench/bench_vs_istiod.py [--quick] [--requests 2000] [--warmup 200] [--levels 1x1,16x1,64x1,64x8]
                                    [--workers 1|2|auto,...] [--starts 3] [--rounds 1] [--json-out FILE]
                                    [--tree LABEL=DIR ...] [--variant LABEL=FLAGS ...]
                                    [--client-cpus 1] [--server-cpus 0] [--transport-floor 64x1]
                                    [--profile-level 64x1 --profile-out DIR]

Both servers get the same ECDSA P-256 root (made by Istio's own helper), the same RS256 JWKS and the same prepared
work: 50 identities with one service-account-shaped token each and agent-shaped CSRs (Istio's GenCSR, P-256), sent
by a Go load client (bench/istiod/load-client) over TLS. istiod's side is bench/istiod/ca-server: Istio's CA
gRPC service from the istio.io/istio module (security/pkg/server/ca + pki/ca + the JWT authenticator, pilot's gRPC
server options). Both Go programs are built on first use into ~/.cache/meshsigner/testbin (bench/istiod/build.sh).

For each level (concurrency x TLS connections) the servers take turns, so background load on a shared machine hits
both alike. Each turn: the client warms up (every response checked: URI SAN, chain to the root, lifetime, key; a
token with a broken signature must be refused), then the timed calls run while this script reads the server's CPU
(utime+stime of its whole process tree, from /proc) before and after. Printed per server and level: CSR/s, p50,
p99, server CPU ms per CSR; then RSS, start to first certificate, and the meshsigner/istiod ratios.
CPU per CSR is the stable figure; CSR/s and latency move with whatever else the machine is doing. With --rounds
every level is repeated and each cell is the median. The peak RSS of each server's tree is sampled during every
timed turn (a level such as 1000x8 holds 1,000 calls in flight). --tree runs another checkout's meshsigner in the
same run (before/after comparisons); --client-cpus and --server-cpus pin with taskset.

--profile-out attaches py-spy (if installed) to meshsigner for one extra timed turn at --profile-level and writes
collapsed stacks there; bench/profile_breakdown.py turns them into a per-part table.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[1]
ISSUER = "https://issuer.bench.invalid"
MESHSIGNER_NAME = "cert-manager-istio-csr.cert-manager.svc"  # istio-csr's default serving DNS name
ISTIOD_NAME = "istiod.istio-system.svc"
IDENTITIES = 50
VALIDITY_SECONDS = 3600  # within meshsigner's default cap (1 h) and istiod's (90 d)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------- process-tree accounting from /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from "state" on; the command name may hold spaces


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of every live process in the tree, plus what the root has collected from exited children."""
    ticks = 0
    for pid in _descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
    return ticks / CLOCK_TICKS


def tree_rss_mib(root: int) -> float:
    """Resident set of the tree (pages shared between worker processes are counted once per process)."""
    pages = 0
    for pid in _descendants(root):
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError):
            continue
    return pages * PAGE_KIB / 1024


# ---------------------------------------------------------------- shared material


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_token(key: rsa.RSAPrivateKey, namespace: str, account: str, lifetime: int = 7200) -> str:
    """A projected service-account token's shape, RS256 (what istiod's JWT authenticator accepts)."""
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": ["istio-ca"], "sub": f"system:serviceaccount:{namespace}:{account}",
        "iat": now, "nbf": now, "exp": now + lifetime,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account, "uid": f"uid-{account}"}},
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-1"})


def write_material(base: Path) -> rsa.RSAPrivateKey:
    """An RS256 issuer (jwks.json) and work.json: 50 identities with a 2 h token each, and a broken token."""
    key = rsa.generate_private_key(65537, 2048)
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": "bench-1", "use": "sig", "alg": "RS256", "n": _b64(numbers.n), "e": _b64(numbers.e)}
    (base / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    identities = []
    for index in range(IDENTITIES):
        namespace, account = f"ns{index}", f"sa{index}"
        identities.append(
            {"namespace": namespace, "serviceAccount": account, "token": mint_token(key, namespace, account)}
        )
    head, payload, signature = identities[0]["token"].split(".")
    middle = len(signature) // 2
    broken = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    work = {"trustDomain": "cluster.local", "identities": identities, "badToken": f"{head}.{payload}.{broken}"}
    (base / "work.json").write_text(json.dumps(work))
    return key


# ---------------------------------------------------------------- child processes with bounded line reads


class Child:
    """A subprocess whose stdout is read line by line with a deadline (never an unbounded wait)."""

    def __init__(self, command: list[str], *, stdin: bool = False, log: Path | None = None, cwd: Path = REPO):
        self.command = command
        self._log = log.open("wb") if log else None
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self._log or subprocess.PIPE,
            stderr=self._log or subprocess.PIPE,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise RuntimeError(f"no output within {timeout:.0f}s from {self.command[0]}")
                if selector.select(left):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    if not chunk:
                        self.process.wait(10)
                        error = self.process.stderr.read().decode() if self.process.stderr else ""
                        raise RuntimeError(f"{Path(self.command[0]).name} exited {self.process.returncode}: {error}")
                    self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()


# ---------------------------------------------------------------- the two servers


@dataclass
class ServerSpec:
    name: str
    server_name: str
    command: list[str]
    port: int
    starts: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    process: Child | None = None
    cwd: Path = REPO  # --tree runs meshsigner from another checkout
    peak_rss: dict[str, tuple[float, int]] = field(default_factory=dict)  # level: (peak tree MiB, processes)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def istiod_spec(binary: str, base: Path) -> ServerSpec:
    port = free_port()
    command = [
        binary,
        f"-addr=127.0.0.1:{port}",
        f"-ca-dir={base / 'ca'}",
        f"-jwks-file={base / 'jwks.json'}",
        f"-issuer={ISSUER}",
        "-audience=istio-ca",
        f"-server-name={ISTIOD_NAME}",
    ]
    return ServerSpec("istiod", ISTIOD_NAME, command, port)


def meshsigner_spec(
    base: Path, workers: str, label: str = "", extra_flags: tuple[str, ...] = (), tree: Path | None = None
) -> ServerSpec:
    port = free_port()
    # another checkout runs as ``python -m signer.cli`` from its own folder, which Python searches first
    program = (
        [str(REPO / ".venv" / "bin" / "python"), "-m", "signer.cli"]
        if tree
        else [str(REPO / ".venv" / "bin" / "meshsigner")]
    )
    command = [
        *program,
        "serve",
        "--signer=local",
        f"--local-ca-dir={base / 'ca'}",
        "--authenticator=jwks",
        f"--jwks-file={base / 'jwks.json'}",
        f"--token-issuer={ISSUER}",
        f"--serving-address=127.0.0.1:{port}",
        f"--readiness-probe-port={free_port()}",
        f"--metrics-port={free_port()}",
        "--serving-signature-algorithm=ECDSA",
        "--serving-certificate-key-size=256",
        f"--workers={workers}",
        # the 1,000-in-flight memory level needs more than the default admission limit (512); the limit is a
        # semaphore, so raising it changes nothing else
        "--max-in-flight=1100",
        *extra_flags,
    ]
    return ServerSpec(f"meshsigner w{workers}{label}", MESHSIGNER_NAME, command, port, cwd=tree or REPO)


def compile_like_the_image(trees: list[Path]) -> None:
    """meshsigner's own modules as the image runs them: compiled to bytecode ahead of time (Dockerfile and
    image/build.sh run compileall). Under PYTHONDONTWRITEBYTECODE=1 (this machine's shells) every timed start would
    otherwise compile them from source, about 50 ms of CPU here, which no deployed replica does. The bytecode goes
    to the usual __pycache__ folders, which git ignores."""
    python = str(REPO / ".venv" / "bin" / "python")
    for tree in trees:
        packages = [str(tree / name) for name in ("signer", "policies", "bridge", "clocks", "proto")]
        subprocess.run([python, "-m", "compileall", "-q", *packages], check=True, timeout=300)


def client_args(client: str, server: ServerSpec, base: Path) -> list[str]:
    return [
        client,
        f"-addr={server.address}",
        f"-root={base / 'ca' / 'root-cert.pem'}",
        f"-server-name={server.server_name}",
        f"-work={base / 'work.json'}",
        f"-validity={VALIDITY_SECONDS}",
    ]


def start_timed(server: ServerSpec, client: str, base: Path, index: int) -> None:
    """Start the server and time it to its first certificate (the client polls every 5 ms over new connections)."""
    first = Child([client, "first", *client_args(client, server, base)[1:]], stdin=True)
    assert first.read_line(60) == "prepared"
    started = time.perf_counter()
    log = base / f"{server.name.replace(' ', '-')}-{index}.log"
    server.process = Child(server.command, log=log, cwd=server.cwd)
    first.send("go")
    result = json.loads(first.read_line(90))
    server.starts.append(time.perf_counter() - started)
    first.stop()
    if not result.get("ok"):
        raise RuntimeError(f"{server.name}: no first certificate: {result}")


# ---------------------------------------------------------------- one timed turn


@dataclass
class Turn:
    server: str
    level: str
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_csr: float
    client_cpu_ms_per_csr: float
    errors: int
    requests: int


def noop_spec(base: Path, tls: bool, sync: bool = False, uvloop: bool = False) -> ServerSpec:
    """bench/noop_ca_server.py: meshsigner's transport without its handler, with or without TLS; grpc.aio, or
    the threaded grpc.server with ``sync``."""
    port = free_port()
    command = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "bench" / "noop_ca_server.py"), f"--port={port}"]
    if tls:
        command += [f"--cert={base / 'noop' / 'serving-cert.pem'}", f"--key={base / 'noop' / 'serving-key.pem'}"]
    if sync:
        command.append("--sync")
    if uvloop:
        command.append("--uvloop")
    name = ("no-op TLS" if tls else "no-op plaintext") + (" sync" if sync else "") + (" uvloop" if uvloop else "")
    return ServerSpec(name, MESHSIGNER_NAME, command, port)


def start_listening(server: ServerSpec, base: Path) -> None:
    server.process = Child(server.command, log=base / f"{server.name.replace(' ', '-')}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen within 30 s")


class PeakRss:
    """Samples the tree's resident set every 20 ms while the timed calls run; keeps the largest."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._stop = threading.Event()
        self.peak_mib, self.processes = 0.0, 1
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = tree_rss_mib(self._root)
            if rss > self.peak_mib:
                self.peak_mib, self.processes = rss, len(_descendants(self._root))

    def stop(self) -> tuple[float, int]:
        self._stop.set()
        self._thread.join()
        return self.peak_mib, self.processes


def run_turn(
    server: ServerSpec,
    client: str,
    base: Path,
    level: str,
    requests: int,
    warmup: int,
    during: Any = None,
    extra: tuple[str, ...] = (),
    client_cpus: str = "",
) -> Turn:
    concurrency, connections = (int(part) for part in level.split("x"))
    assert server.process is not None
    if server.process.process.poll() is not None:
        raise RuntimeError(f"{server.name} exited with {server.process.process.returncode}")
    pin = ["taskset", "-c", client_cpus] if client_cpus else []
    load = Child(
        [
            *pin,
            client,
            "load",
            *client_args(client, server, base)[1:],
            f"-concurrency={concurrency}",
            f"-connections={connections}",
            f"-requests={requests}",
            f"-warmup={warmup}",
            *extra,
        ],
        stdin=True,
    )
    try:
        marker = load.read_line(300)
        if marker != "warm":
            raise RuntimeError(f"load client said {marker!r}")
        hook = during(server) if during else None
        before = tree_cpu_seconds(server.process.pid)
        peak = PeakRss(server.process.pid)
        load.send("go")
        result = json.loads(load.read_line(600))
        after = tree_cpu_seconds(server.process.pid)
        server.peak_rss[level] = max(server.peak_rss.get(level, (0.0, 1)), peak.stop())
        if hook:
            hook()
    finally:
        load.stop()
    done = max(1, requests - result["errors"])
    if result["errors"]:
        print(f"  ! {server.name} {level}: {result['errors']} errors, first: {result.get('first_error')}")
    server.rss_mib.append(tree_rss_mib(server.process.pid))
    return Turn(
        server.name,
        level,
        result["rate"],
        result["p50_ms"],
        result["p99_ms"],
        (after - before) * 1000 / done,
        result["client_cpu_ms"] / done,
        result["errors"],
        requests,
    )


# ---------------------------------------------------------------- py-spy (optional)


def thread_cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds per thread name across the tree (gRPC core names its threads; Python's main thread is the
    process name)."""
    totals: dict[str, float] = {}
    for pid in _descendants(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                raw = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            except OSError:
                continue
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            name = "main thread" if task == str(pid) else name
            fields = raw[raw.rindex(")") + 2 :].split()
            totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return totals


def profile_hook(out_dir: Path, label: str, requests: int) -> Any:
    """For one timed turn: py-spy on every process of the server's tree (Python stacks; --native cannot go with
    --nonblocking, and blocking would stop the server at every sample), perf (samples per shared object, kernel
    included) when it is installed, and CPU per thread name."""
    py_spy = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile-out needs py-spy (pip install py-spy into .venv)")
    perf = shutil.which("perf")

    def attach(server: ServerSpec) -> Any:
        assert server.process is not None
        recorders = []
        for pid in _descendants(server.process.pid):
            out = out_dir / f"{label}-pyspy-{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                       "--nonblocking", "--output", str(out)]  # fmt: skip
            recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if perf:
                command = [
                    perf,
                    "record",
                    "-F",
                    "499",
                    "-g",
                    "-p",
                    str(pid),
                    "-o",
                    str(out_dir / f"{label}-{pid}.perf"),
                ]
                recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.5)  # the samplers need a moment to attach before the timed calls start
        root = server.process.pid
        threads_before = thread_cpu_seconds(root)

        def detach() -> None:
            threads_after = thread_cpu_seconds(root)
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)
            for recorder in recorders:
                try:
                    recorder.wait(60)
                except subprocess.TimeoutExpired:
                    recorder.kill()
            lines = [f"CPU ms per CSR by thread name ({requests} timed calls):"]
            for name in sorted(threads_after, key=lambda n: threads_before.get(n, 0.0) - threads_after[n]):
                spent = threads_after[name] - threads_before.get(name, 0.0)
                if spent > 0:
                    lines.append(f"  {name:<28} {spent * 1000 / requests:6.3f}")
            (out_dir / f"{label}-threads.txt").write_text("\n".join(lines) + "\n")
            print("\n".join(lines))

        return detach

    return attach


# ---------------------------------------------------------------- report


def median_turn(turns: list[Turn]) -> Turn:
    """One figure per field: the median over the rounds (each field on its own)."""
    if len(turns) == 1:
        return turns[0]
    first = turns[0]
    return Turn(
        first.server,
        first.level,
        statistics.median(t.rate for t in turns),
        statistics.median(t.p50_ms for t in turns),
        statistics.median(t.p99_ms for t in turns),
        statistics.median(t.cpu_ms_per_csr for t in turns),
        statistics.median(t.client_cpu_ms_per_csr for t in turns),
        sum(t.errors for t in turns),
        sum(t.requests for t in turns),
    )


def summarise(turns: list[Turn], servers: list[ServerSpec], levels: list[str]) -> dict[str, Any]:
    def cell(server: str, level: str) -> Turn:
        return median_turn([t for t in turns if t.server == server and t.level == level])

    rounds = max(1, len(turns) // max(1, len(servers) * len(levels)))
    if rounds > 1:
        print(f"\nmedians over {rounds} rounds; CPU ms/CSR of each round:")
        for server in servers:
            for level in levels:
                each = ", ".join(
                    f"{t.cpu_ms_per_csr:.3f}" for t in turns if t.server == server.name and t.level == level
                )
                print(f"  {server.name:<24} {level:<8} {each}")

    print()
    header = f"{'level (c x conns)':<18}" + "".join(f"| {s.name:^42} " for s in servers)
    print(header)
    print(
        f"{'':<18}"
        + "".join(f"| {'CSR/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/CSR':>10} {'cli ms':>6} " for _ in servers)
    )
    for level in levels:
        row = f"{level:<18}"
        for server in servers:
            t = cell(server.name, level)
            row += f"| {t.rate:7.0f} {t.p50_ms:7.2f} {t.p99_ms:7.2f} {t.cpu_ms_per_csr:10.3f} "
            row += f"{t.client_cpu_ms_per_csr:6.3f} "
        print(row)
    print()
    for server in servers:
        starts = ", ".join(f"{s:.2f}" for s in server.starts)
        print(
            f"{server.name:<20} start to first certificate: {starts} s "
            f"(median {statistics.median(server.starts):.2f}); "
            f"RSS after the run {server.rss_mib[-1]:.0f} MiB"
        )
        peaks = "; ".join(
            f"{level} {mib:.0f} MiB over {count} process{'es' if count > 1 else ''} ({mib / count:.0f} per process)"
            for level, (mib, count) in server.peak_rss.items()
        )
        print(f"{'':<20} peak RSS during the timed calls: {peaks}")
    reference, others = servers[0], servers[1:]
    print()
    ratios: dict[str, Any] = {}
    for other in others:
        print(f"{other.name} / {reference.name}:")
        for level in levels:
            mine, theirs = cell(other.name, level), cell(reference.name, level)
            entry = {
                "cpu_per_csr": mine.cpu_ms_per_csr / theirs.cpu_ms_per_csr,
                "rate": mine.rate / theirs.rate,
                "p50": mine.p50_ms / theirs.p50_ms,
                "p99": mine.p99_ms / theirs.p99_ms,
            }
            ratios[f"{other.name}/{level}"] = entry
            print(
                f"  {level:<8} CPU per CSR {entry['cpu_per_csr']:4.2f}x   CSR/s {entry['rate']:4.2f}x   "
                f"p50 {entry['p50']:4.2f}x   p99 {entry['p99']:4.2f}x"
            )
        print(
            f"  RSS {other.rss_mib[-1] / reference.rss_mib[-1]:4.2f}x   start to first certificate "
            f"{min(other.starts) / min(reference.starts):4.1f}x (best of each)"
        )
    return {
        "turns": [t.__dict__ for t in turns],
        "servers": [
            {
                "name": s.name,
                "starts_s": s.starts,
                "rss_mib": s.rss_mib,
                "peak_rss_mib": {level: {"tree": m, "processes": n} for level, (m, n) in s.peak_rss.items()},
                "command": s.command,
                "tree": str(s.cwd),
            }
            for s in servers
        ],
        "ratios": ratios,
    }


def transport_floor(args: argparse.Namespace, client: str, base: Path, servers: list[ServerSpec]) -> list[Any]:
    """The no-op server with and without TLS at the given levels, next to meshsigner's own figure there."""
    floors = [noop_spec(base, tls=True), noop_spec(base, tls=False), noop_spec(base, tls=True, sync=True)]
    if importlib.util.find_spec("uvloop") is not None:
        floors.append(noop_spec(base, tls=True, uvloop=True))
    figures: list[Any] = []
    try:
        for floor in floors:
            start_listening(floor, base)
        print("\ntransport floor (bench/noop_ca_server.py: same gRPC options, no handler work):")
        for level in args.transport_floor.split(","):
            for floor in floors:
                extra = ("-no-check",) if floor.name.startswith("no-op TLS") else ("-no-check", "-insecure")
                turn = run_turn(floor, client, base, level, args.requests, args.warmup, extra=extra)
                figures.append(turn.__dict__)
                print(f"  {floor.name:<16} {level:<6} {turn.rate:7.0f} calls/s  CPU {turn.cpu_ms_per_csr:.3f} ms/call")
    finally:
        for floor in floors:
            if floor.process is not None:
                floor.process.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests, 50 warm-up, 2 levels")
    parser.add_argument("--requests", type=int, default=2000, help="timed calls per server and level")
    parser.add_argument("--warmup", type=int, default=200, help="checked calls before each timed turn")
    parser.add_argument("--levels", default="1x1,16x1,64x1,64x8", help="concurrency x TLS connections, in order")
    parser.add_argument("--workers", default="1", help="meshsigner --workers values to compare, e.g. 1,2")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="one more meshsigner (1 worker) with extra serve flags, e.g. quiet=--log-level=warning",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="one more meshsigner (1 worker) run from another checkout, e.g. base=/tmp/meshsigner-main",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every level this often; report medians")
    parser.add_argument("--client-cpus", default="", help="taskset -c list for the load client, e.g. 1")
    parser.add_argument("--server-cpus", default="", help="taskset -c list for the servers, e.g. 0")
    parser.add_argument("--starts", type=int, default=3, help="timed cold starts per server (the last keeps serving)")
    parser.add_argument("--json-out", type=Path, help="also write every figure here")
    parser.add_argument("--profile-out", type=Path, help="py-spy meshsigner for one extra turn; stacks go here")
    parser.add_argument("--profile-level", default="64x1")
    parser.add_argument(
        "--transport-floor", default="", help="levels at which to also drive bench/noop_ca_server.py, TLS and not"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, CA, work file)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup, args.levels, args.starts = 300, 50, "1x1,16x8", 1
    levels = args.levels.split(",")

    built = subprocess.run(
        ["bash", str(REPO / "bench" / "istiod" / "build.sh")], check=True, capture_output=True, text=True, timeout=3600
    ).stdout.split()
    server_binary, client = built[0], built[1]
    base = Path(tempfile.mkdtemp(prefix="meshsigner-vs-istiod-"))
    init = [
        server_binary,
        f"-init-ca={base / 'ca'}",
        f"-serving-out={base / 'noop'}",
        f"-server-name={MESHSIGNER_NAME}",
    ]
    subprocess.run(init, check=True, timeout=60)
    write_material(base)

    servers = [istiod_spec(server_binary, base)]
    servers += [meshsigner_spec(base, w) for w in args.workers.split(",")]
    for variant in args.variant:
        label, _, flags = variant.partition("=")
        servers.append(meshsigner_spec(base, "1", f" {label}", tuple(flags.split())))
    for tree in args.tree:
        label, _, folder = tree.partition("=")
        servers.append(meshsigner_spec(base, "1", f" {label}", tree=Path(folder).resolve()))
    compile_like_the_image([REPO, *(Path(t.partition("=")[2]).resolve() for t in args.tree)])
    if args.server_cpus:
        for server in servers:
            server.command = ["taskset", "-c", args.server_cpus, *server.command]
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.requests} timed calls "
        f"after {args.warmup} checked ones per server and level; work in {base}"
    )
    turns: list[Turn] = []
    try:
        for server in servers:
            for index in range(args.starts):
                if server.process is not None:
                    server.process.stop()
                start_timed(server, client, base, index)
        for number, level in enumerate(level for _ in range(args.rounds) for level in levels):
            order = servers if number % 2 == 0 else list(reversed(servers))  # who goes first alternates too
            for server in order:
                turn = run_turn(server, client, base, level, args.requests, args.warmup, client_cpus=args.client_cpus)
                turns.append(turn)
                print(
                    f"  {server.name:<20} {level:<6} {turn.rate:7.0f} CSR/s  p50 {turn.p50_ms:6.2f} ms  "
                    f"p99 {turn.p99_ms:6.2f} ms  CPU {turn.cpu_ms_per_csr:.3f} ms/CSR",
                    flush=True,
                )
        report = summarise(turns, servers, levels)
        if args.transport_floor:
            report["transport_floor"] = transport_floor(args, client, base, servers)
        if args.profile_out:
            args.profile_out.mkdir(parents=True, exist_ok=True)
            for server in servers[1:]:
                label = server.name.replace(" ", "-") + "-" + args.profile_level
                turn = run_turn(
                    server,
                    client,
                    base,
                    args.profile_level,
                    args.requests,
                    args.warmup,
                    during=profile_hook(args.profile_out, label, args.requests),
                )
                print(
                    f"\nprofiled {server.name} at {args.profile_level}: CPU {turn.cpu_ms_per_csr:.3f} ms/CSR "
                    f"(with py-spy attached); stacks in {args.profile_out}"
                )
        if args.json_out:
            args.json_out.write_text(
                json.dumps(
                    {
                        "args": vars(args) | {"json_out": str(args.json_out), "profile_out": str(args.profile_out)},
                        **report,
                    },
                    indent=2,
                )
            )
    finally:
        for server in servers:
            if server.process is not None:
                server.process.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
