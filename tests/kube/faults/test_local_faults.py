"""A fault that needs no cluster, against ``meshsigner serve --signer local --authenticator jwks``: the JWKS file
replaced by garbage and then rotated. (It sits with the other fault scenarios, so tests/kube marks it ``cluster``
although it never touches the plane.)"""

from __future__ import annotations

from pathlib import Path

import grpc

from tests.kube.faults.tally import Answer, Tally, burst, call
from tests.support.csr_builder import make_csr
from tests.support.processes import local_signer_flags, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for


def _local_signer(tmp_path: Path, issuer: TokenIssuer, *flags: str):
    return start_server([*local_signer_flags(tmp_path, issuer), "--log-format=json", *flags], tmp_path / "serve.log")


def _workloads(count: int) -> list[tuple[str, str, str]]:
    """(namespace, service account, csr) of ``count`` workloads."""
    return [(f"ns{i}", f"sa{i}", make_csr([f"spiffe://cluster.local/ns/ns{i}/sa/sa{i}"])) for i in range(count)]


def test_jwks_replaced_by_garbage_then_rotated(tmp_path):
    old, new = TokenIssuer(), TokenIssuer()
    server = _local_signer(tmp_path, old)
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        workloads = _workloads(10)

        def sender(issuer: TokenIssuer):
            def send(index: int) -> Answer:
                ns, sa, csr = workloads[index % len(workloads)]
                return call(stub, csr, issuer.token(ns, sa), deadline=15)

            return send

        jwks = tmp_path / "jwks.json"
        tally = Tally("JWKS file replaced by garbage (3 kinds), then by a rotated key set (overlap, then new only)")
        before = burst(sender(old), 30, 10)
        assert all(a.code == grpc.StatusCode.OK for a in before)
        tally.add(before)

        for garbage in (b"\x00\xff" * 512, b'{"keys": "nope"}', b""):
            # the file is re-checked every second and each distinct bad file is logged once: one more failure line
            # than before the write means a check read this garbage
            failures = server.log().count("jwks_reload_failed")
            jwks.write_bytes(garbage)
            wait_for(lambda n=failures: server.log().count("jwks_reload_failed") >= n + 1, "the garbage JWKS read")
            kept = burst(sender(old), 20, 10)  # the last good keys stay in force
            assert all(a.code == grpc.StatusCode.OK for a in kept), [a.details for a in kept]
            tally.add(kept)

        overlap = {"keys": [*old.jwks()["keys"], *[{**k, "kid": f"new-{k['kid']}"} for k in new.jwks()["keys"]]]}
        loads = server.log().count('"jwks_loaded"') + server.log().count("JWKS loaded")
        _write_json(jwks, overlap)
        wait_for(lambda: server.log().count('"jwks_loaded"') + server.log().count("JWKS loaded") > loads,
                 "the overlapping key set loaded")  # fmt: skip
        both = burst(sender(old), 20, 10) + burst(_kid_sender(stub, workloads, new, "new-ec-1"), 20, 10)
        assert all(a.code == grpc.StatusCode.OK for a in both), [a.details for a in both]
        tally.add(both)

        loads = server.log().count('"jwks_loaded"') + server.log().count("JWKS loaded")
        new.write_jwks(jwks)
        wait_for(lambda: server.log().count('"jwks_loaded"') + server.log().count("JWKS loaded") > loads,
                 "the new key set loaded")  # fmt: skip
        retired = burst(sender(old), 10, 5)  # fewer than --peer-auth-failure-burst (20)
        assert all(a.code == grpc.StatusCode.UNAUTHENTICATED for a in retired), [a.details for a in retired]
        current = burst(sender(new), 20, 10)
        assert all(a.code == grpc.StatusCode.OK for a in current), [a.details for a in current]
        tally.add(retired + current)
        tally.notes = "UNAUTHENTICATED = tokens of the retired key after the rotation (expected)"
        row = tally.report()
        assert tally.lost == 0 and "INTERNAL" not in row["refused"], row
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def _write_json(path: Path, document: dict) -> None:
    import json

    path.write_text(json.dumps(document))


def _kid_sender(stub, workloads, issuer: TokenIssuer, kid: str):
    def send(index: int) -> Answer:
        ns, sa, csr = workloads[index % len(workloads)]
        return call(stub, csr, issuer.token(ns, sa, kid=kid), deadline=15)

    return send


def test_a_bad_jwks_file_is_logged_once_not_at_every_check(tmp_path):
    from loguru import logger

    from signer.auth.jwks import JwksAuthenticator
    from tests.support.clock import ManualClock

    jwks = TokenIssuer().write_jwks(tmp_path / "jwks.json")
    auth = JwksAuthenticator(jwks, issuer="https://issuer.test", audiences=("istio-ca",), clock=ManualClock())
    jwks.write_bytes(b"\x00 not a key set")
    failures: list[str] = []
    sink = logger.add(lambda m: failures.append(m), filter=lambda r: r["extra"].get("event") == "jwks_reload_failed")
    try:
        for _ in range(5):  # five watch ticks over the same bad file
            assert auth.reload() is False
    finally:
        logger.remove(sink)
    assert auth.ready, "the last good keys stay in force"
    assert len(failures) == 1, f"{len(failures)} error lines for one bad file"
