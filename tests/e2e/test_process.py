"""Behaviour of the serve process itself: start-up refusals, serving-certificate rotation, workers, probes."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
from cryptography import x509

from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.processes import REPO, SERVER_NAME, local_signer_flags, readyz, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

OWN = "spiffe://cluster.local/ns/orders/sa/web"


def _serving_serial(port: int, root: bytes) -> int:
    context = ssl.create_default_context(cadata=root.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_bad_flag_stops_start_with_its_name():
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", "serve", "--metrics-port=abc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--metrics-port" in result.stderr


def test_environment_variables_configure_serve(tmp_path, token_issuer):
    server = start_server(
        local_signer_flags(tmp_path, token_issuer),
        tmp_path / "log",
        env={"MESHSIGNER_MAX_CLIENT_CERTIFICATE_DURATION": "15m"},
    )
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        code, chain, _ = create(stub, make_csr([OWN]), token_issuer.token())
        assert code is grpc.StatusCode.OK
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert 890 < (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() - 120 <= 900
    finally:
        server.stop()


def test_serving_certificate_is_renewed_without_restart(tmp_path, token_issuer):
    server = start_server(
        [*local_signer_flags(tmp_path, token_issuer), "--serving-certificate-duration=6s"], tmp_path / "log"
    )
    try:
        root = (tmp_path / "ca" / "root-cert.pem").read_bytes()
        first = _serving_serial(server.grpc_port, root)
        # renewed at 2/3 of its 6 s life: the second "obtained" line is the event, the new serial its effect
        wait_for(lambda: server.log().count("serving certificate obtained") >= 2, "the serving certificate renewed")
        wait_for(lambda: _serving_serial(server.grpc_port, root) != first, "new connections get the renewed one")
        assert server.process.poll() is None
    finally:
        server.stop()


def test_missing_jwks_fails_start_clearly(tmp_path, token_issuer):
    flags = local_signer_flags(tmp_path, token_issuer)
    flags[3] = f"--jwks-file={tmp_path / 'absent.json'}"
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", "serve", *flags, "--serving-address=127.0.0.1:0",
         "--readiness-probe-port=0", "--metrics-port=0"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "--jwks-file" in result.stderr


def test_two_workers_share_the_port_and_one_metrics_endpoint(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    scratch = tmp_path / "tmp"  # where the first process makes its private metrics directory
    scratch.mkdir()
    flags = [*local_signer_flags(tmp_path, token_issuer), "--workers=2"]
    server = start_server(flags, tmp_path / "log", env={"TMPDIR": str(scratch)})
    try:
        made = [path.name for path in scratch.iterdir()]
        assert len(made) == 1 and made[0].startswith("meshsigner-metrics-")
        root = (tmp_path / "ca" / "root-cert.pem").read_bytes()
        serials: set[int] = set()

        def both_answered() -> bool:
            # each worker has its own serving certificate, so the serials tell which one answered
            serials.add(_serving_serial(server.grpc_port, root))
            return len(serials) == 2

        wait_for(both_answered, "both workers answering on the port")  # the second starts after the first
        issued = 'meshsigner_csr_requests_total{code="OK",reason="ISSUED"}'
        before = server.metric(issued)
        calls = 24  # each on its own connection: the kernel spreads them over both processes
        for _ in range(calls):
            code, _, _ = create(server.stub(root, own_connection=True), make_csr([OWN]), token_issuer.token())
            assert code is grpc.StatusCode.OK
        # only the first process serves /metrics; it counts what both served (one worker alone would miss some)
        assert server.metric(issued) == before + calls
        assert server.metric("meshsigner_csr_request_duration_seconds_count") >= calls
        assert readyz(server.readiness_port)[0] == 200
    finally:
        exit_code = server.stop()
    assert exit_code == 0, "the workers did not stop cleanly"
    assert list(scratch.iterdir()) == [], "the metrics directory outlived the server"


def test_the_log_lines_of_a_call_carry_its_request_id(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    server = start_server([*local_signer_flags(tmp_path, token_issuer), "--log-format=json"], tmp_path / "log")
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        other = "spiffe://cluster.local/ns/payments/sa/api"  # not the caller's own identity: refused
        code, _, details = create(stub, make_csr([other]), token_issuer.token())
        assert code is grpc.StatusCode.PERMISSION_DENIED
        found = re.search(r"\(request ([0-9a-f]{16})\)", details)
        assert found, details
        request_id = found.group(1)

        def events_of_the_call() -> dict[str, dict[str, object]]:
            records = [json.loads(line)["record"] for line in server.log().splitlines() if line.startswith("{")]
            return {r["extra"].get("event"): r["extra"] for r in records if r["extra"].get("request_id") == request_id}

        # the refusal (request path) and the decision record (written by the decision-log thread)
        wait_for(lambda: {"csr_refused", "decision"} <= events_of_the_call().keys(), "both lines of the call")
    finally:
        server.stop()
