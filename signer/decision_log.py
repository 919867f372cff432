"""Writes one structured record per decision to the log and, optionally, appended to a JSON-lines file.

Records are written by a thread of their own, so a slow disk or log sink never holds up the event loop. The queue
is bounded: if the writer falls that far behind, further records are dropped and counted (the request itself is
not held up). ``close()`` writes everything queued before it returns, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from loguru import logger
from prometheus_client import Counter

from policies import Caller, Decision, IssuanceRequest, decision_record

QUEUE_RECORDS = 10_000


@dataclass(frozen=True)
class _PendingRecord:
    decision_id: str
    caller: Caller
    request: IssuanceRequest
    decision: Decision
    issued_not_after: datetime | None


class DecisionLog:
    def __init__(
        self, path: str | None = None, *, to_log: bool = True, dropped: Counter, max_queued: int = QUEUE_RECORDS
    ) -> None:
        # held open for the life of the server; close() releases it
        self._file: IO[str] | None = Path(path).open("a", encoding="utf-8") if path else None  # noqa: SIM115
        self._to_log = to_log  # False when the log level drops INFO: then nobody would read the record there
        self._dropped = dropped
        self._queue: queue.Queue[_PendingRecord | None] = queue.Queue(max_queued)  # None: finish
        self._writer: threading.Thread | None = None
        if self._to_log or self._file is not None:
            self._writer = threading.Thread(target=self._write_queued, name="decision-log", daemon=True)
            self._writer.start()

    def __call__(
        self,
        decision_id: str,
        caller: Caller,
        request: IssuanceRequest,
        decision: Decision,
        issued_not_after: datetime | None,
    ) -> None:
        if self._writer is None:
            return
        try:
            self._queue.put_nowait(_PendingRecord(decision_id, caller, request, decision, issued_not_after))
        except queue.Full:
            self._dropped.inc()

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_queued(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            try:
                self._write(pending)
            except Exception:  # a record that cannot be written must not stop the ones after it
                logger.bind(event="decision_record_failed").exception("decision record not written")

    def _write(self, pending: _PendingRecord) -> None:
        record: dict[str, Any] = decision_record(
            pending.decision_id,
            pending.caller,
            pending.request,
            pending.decision,
            issued_not_after=pending.issued_not_after,
        )
        if self._to_log:
            # written on this thread, outside the request's log context: the request id is bound here
            logger.bind(event="decision", request_id=pending.decision_id, record=record).info(
                "{} {} {}", record.get("decision"), pending.caller.spiffe_id, pending.decision.reason
            )
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._file.flush()
