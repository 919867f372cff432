"""Decision records are written by a thread of their own: the request path only queues them, a clean shutdown
writes every queued record, and a writer that falls too far behind drops (and counts) rather than blocking."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from policies import Caller, Decision, IssuanceRequest
from policies.builtin import OwnIdentityOnly
from signer.decided_request import DecidedRequest
from signer.decision_log import DecisionLog

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _counter() -> Counter:
    return Counter("dropped_total", "records dropped", registry=CollectorRegistry())


def _decide(index: int) -> tuple[Caller, IssuanceRequest, Decision]:
    caller = Caller("cluster.local", "orders", f"web-{index}")
    request = IssuanceRequest(uris=(caller.spiffe_id,), validity_seconds=3600)
    decision = OwnIdentityOnly("cluster.local", 3600).decide(caller, request, now=NOW, ca_not_after=None)
    return caller, request, decision


def test_a_clean_shutdown_writes_every_queued_record(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), to_log=False, dropped=_counter())
    for index in range(500):
        caller, request, decision = _decide(index)
        log(DecidedRequest(f"id-{index}", caller, request, decision))
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [record["caller"]["serviceAccount"] for record in records] == [f"web-{i}" for i in range(500)]


def _granted_accounts(message: object) -> list[str]:
    """The service accounts whose full records a log line carries (one refusal, or a window of grants)."""
    extra = message.record["extra"]  # type: ignore[attr-defined]  # loguru passes a Message str with .record
    records = json.loads(extra["records"]) if extra["event"] == "decisions" else [extra["record"]]
    return [record["caller"]["serviceAccount"] for record in records]


def test_a_writer_that_falls_behind_drops_and_counts() -> None:
    writing, release = threading.Event(), threading.Event()
    written: list[str] = []

    def slow_sink(message: object) -> None:  # stands for a stalled disk or log pipe
        writing.set()
        release.wait()
        written.extend(_granted_accounts(message))

    sink = logger.add(slow_sink, filter=lambda record: record["extra"].get("event") == "decisions", format="{message}")
    registry = CollectorRegistry()
    log = DecisionLog(
        None,
        to_log=True,
        dropped=Counter("dropped", "dropped", registry=registry),
        max_queued=2,
        linger_seconds=0,
    )
    try:
        log(DecidedRequest("id-0", *_decide(0)))
        writing.wait()  # the writer holds record 0; the queue has room for two more
        for index in range(1, 8):
            log(DecidedRequest(f"id-{index}", *_decide(index)))  # returns at once: the request path never waits
        assert registry.get_sample_value("dropped_total") == 5
        release.set()
        log.close()
    finally:
        release.set()
        logger.remove(sink)
    assert written == [f"web-{i}" for i in range(3)]


def test_grants_share_log_lines_refusals_get_their_own_and_no_record_is_left_out(tmp_path: Path) -> None:
    lines: list[object] = []
    sink = logger.add(
        lines.append, filter=lambda record: record["extra"].get("event") in ("decision", "decisions"), level="INFO"
    )
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), to_log=True, dropped=_counter(), linger_seconds=60)  # one window: close() ends it
    stranger = Caller("cluster.local", "orders", "stranger")
    foreign = IssuanceRequest(uris=("spiffe://cluster.local/ns/orders/sa/web-0",), validity_seconds=3600)
    refusal = OwnIdentityOnly("cluster.local", 3600).decide(stranger, foreign, now=NOW, ca_not_after=None)
    assert not refusal.allowed
    try:
        for index in range(200):
            log(DecidedRequest(f"id-{index}", *_decide(index)))
        log(DecidedRequest("id-refused", stranger, foreign, refusal))
        log.close()
    finally:
        logger.remove(sink)
    grant_lines = [m for m in lines if m.record["extra"]["event"] == "decisions"]  # type: ignore[attr-defined]
    refusal_lines = [m for m in lines if m.record["extra"]["event"] == "decision"]  # type: ignore[attr-defined]
    assert len(grant_lines) == 1, "one window, one line for its grants"
    assert _granted_accounts(grant_lines[0]) == [f"web-{i}" for i in range(200)]
    assert grant_lines[0].record["message"].startswith("granted 200 certificates: spiffe://")  # type: ignore[attr-defined]
    assert [_granted_accounts(m) for m in refusal_lines] == [["stranger"]]
    on_file = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["decisionId"] for r in on_file] == [f"id-{i}" for i in range(200)] + ["id-refused"]
