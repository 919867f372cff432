"""SIGTERM during a burst of CreateCertificate calls: readiness turns 503 first, every call the server accepted is
answered, new calls get UNAVAILABLE, and the process exits 0 (with ``--workers`` too: the parent forwards it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.decision_records import DecisionRecords
from tests.support.processes import ServerProcess, local_signer_flags, readyz, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

CALLERS = 12
WEB = "spiffe://cluster.local/ns/orders/sa/web"


@dataclass
class Burst:
    """Callers on their own connections, each calling in a loop until the server stops answering."""

    server: ServerProcess
    root_pem: bytes
    token: str
    results: list[tuple[float, float, grpc.StatusCode, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def caller(self) -> None:
        stub = self.server.stub(self.root_pem, own_connection=True)
        csr = make_csr([WEB])
        while True:
            started = time.monotonic()
            code, _, details = create(stub, csr, self.token)
            with self.lock:
                self.results.append((started, time.monotonic(), code, details))
            if code != grpc.StatusCode.OK:
                return

    def ok_count(self) -> int:
        with self.lock:
            return sum(1 for *_, code, _ in self.results if code == grpc.StatusCode.OK)


@dataclass
class ShutdownWatch:
    """Polls /readyz and the gRPC port until the process exits: (time, readyz status or None, port accepts)."""

    server: ServerProcess
    samples: list[tuple[float, int | None, bool]] = field(default_factory=list)

    def run(self) -> None:
        while self.server.process.poll() is None:
            try:
                status: int | None = readyz(self.server.readiness_port)[0]
            except OSError:
                status = None
            try:
                with socket.create_connection(("127.0.0.1", self.server.grpc_port), timeout=1):
                    accepts = True
            except OSError:
                accepts = False
            self.samples.append((time.monotonic(), status, accepts))


def issued_records(path: Path) -> int:
    return sum(1 for record in DecisionRecords(path).all() if record.get("issued"))


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("workers", "extra"),
    [(1, ()), (2, ()), (1, ("--enable-client-cert-authenticator",)), (2, ("--enable-client-cert-authenticator",))],
    ids=["one-process", "two-workers", "client-cert-front", "client-cert-front-two-workers"],
)
def test_sigterm_during_a_burst_loses_no_accepted_call(tmp_path: Path, workers: int, extra: tuple[str, ...]) -> None:
    issuer = TokenIssuer()
    decisions = tmp_path / "decisions.jsonl"
    server = start_server(
        [
            *local_signer_flags(tmp_path, issuer),
            f"--workers={workers}",
            "--shutdown-grace-period=20s",
            f"--decision-log={decisions}",
            "--log-format=json",
            *extra,
        ],
        tmp_path / "serve.log",
    )
    worker_pids = children(server.process.pid)
    assert len(worker_pids) == workers - 1
    burst = Burst(server, (tmp_path / "ca" / "root-cert.pem").read_bytes(), issuer.token())
    threads = [threading.Thread(target=burst.caller) for _ in range(CALLERS)]
    watch = ShutdownWatch(server)
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: burst.ok_count() >= 50, "the burst is under way")
        watcher = threading.Thread(target=watch.run)
        watcher.start()
        sigterm_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log()
        for thread in threads:
            thread.join(60)
        watcher.join(10)
    finally:
        server.stop()

    codes = {code for *_, code, _ in burst.results}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, [
        r for r in burst.results if r[2] not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    ][:3]
    # an UNAVAILABLE is either the service refusing a call that arrived after the signal, before doing anything,
    # or the transport refusing a new call once the listener closed: never an accepted call given up
    refusals_by_handler = [details for *_, code, details in burst.results if "(request " in details]
    assert all(details.startswith("SHUTTING_DOWN") for details in refusals_by_handler), refusals_by_handler
    # every certificate the server issued reached its caller (the records are written before the answer is sent)
    assert issued_records(decisions) == burst.ok_count()
    finished_after_signal = [r for r in burst.results if r[2] == grpc.StatusCode.OK and r[0] < sigterm_at < r[1]]
    print(f"calls OK {burst.ok_count()}, in flight at SIGTERM and still answered OK {len(finished_after_signal)}")

    # readiness never said ready once the listener refused connections, and it said 503 while the server ran on
    refused_at = [t for t, _, accepts in watch.samples if not accepts]
    if refused_at:
        assert all(status != 200 for t, status, _ in watch.samples if t >= refused_at[0])
    assert any(status == 503 for _, status, _ in watch.samples), watch.samples[:5]
    events = [
        json.loads(line).get("record", {}).get("extra", {}).get("event")
        for line in server.log().splitlines()
        if line.startswith("{")
    ]
    assert events.index("shutdown_not_ready") < events.index("shutdown_drained") < events.index("stopped")
    for pid in worker_pids:
        assert not alive(pid), f"worker {pid} still running"
