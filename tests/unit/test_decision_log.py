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
        log(f"id-{index}", caller, request, decision, None)
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [record["caller"]["serviceAccount"] for record in records] == [f"web-{i}" for i in range(500)]


def test_a_writer_that_falls_behind_drops_and_counts() -> None:
    writing, release = threading.Event(), threading.Event()
    written: list[str] = []

    def slow_sink(message: object) -> None:  # stands for a stalled disk or log pipe
        writing.set()
        release.wait()
        written.append(str(message))

    sink = logger.add(slow_sink, filter=lambda record: record["extra"].get("event") == "decision", format="{message}")
    registry = CollectorRegistry()
    log = DecisionLog(None, to_log=True, dropped=Counter("dropped", "dropped", registry=registry), max_queued=2)
    try:
        log("id-0", *_decide(0), None)
        writing.wait()  # the writer holds record 0; the queue has room for two more
        for index in range(1, 8):
            log(f"id-{index}", *_decide(index), None)  # returns at once: the request path never waits
        assert registry.get_sample_value("dropped_total") == 5
        release.set()
        log.close()
    finally:
        release.set()
        logger.remove(sink)
    assert [line.split()[1] for line in written] == [f"spiffe://cluster.local/ns/orders/sa/web-{i}" for i in range(3)]
