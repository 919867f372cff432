"""Writes one structured record per decision to the log and, optionally, appended to a JSON-lines file.

Records are written by a thread of their own, so a slow disk or log sink never holds up the event loop. The queue
is bounded: if the writer falls that far behind, further records are dropped and counted (the request itself is
not held up). ``close()`` writes everything queued before it returns, so a clean shutdown loses nothing.

What reaches the log at INFO, and what it costs: a log call through loguru costs tens of microseconds whatever it
carries, as much as a third of a certificate's handler. So the writer takes every record queued within a short
window (``linger_seconds``, at most ``MAX_BATCH``) and writes:
- every refusal as a line of its own, with its full record (``event=decision``): refusals are what an operator
  looks for, and they are rare;
- the grants of the window as one line (``event=decisions``, "granted N certificates: <SPIFFE IDs>") that carries
  every grant's full record in ``records``: a JSON array, as text, of the same JSON the decision-log file gets
  (each record is serialised once, and JSON text costs a quarter of what loguru's rendering of the dicts did).
  On an idle server that is one line per grant, as before; under load one line carries many grants, and the log
  call's cost is shared by them.
- to ``--decision-log``: one JSON line per record, every record, serialised once, written in one write per window.
No record is left out of either; only the number of log lines changes.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

from loguru import logger
from prometheus_client import Counter

from policies import decision_record
from signer.decided_request import DecidedRequest

QUEUE_RECORDS = 10_000
MAX_BATCH = 512  # records in one window; bounds a log line's size
LINGER_SECONDS = 0.05  # how long the writer waits for more records after the first of a window


class DecisionLog:
    def __init__(
        self,
        path: str | None = None,
        *,
        to_log: bool = True,
        dropped: Counter,
        max_queued: int = QUEUE_RECORDS,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        # held open for the life of the server; close() releases it
        self._file: IO[str] | None = Path(path).open("a", encoding="utf-8") if path else None  # noqa: SIM115
        self._to_log = to_log  # False when the log level drops INFO: then nobody would read the record there
        self._dropped = dropped
        self._max_queued = max_queued
        self._linger = linger_seconds
        # The request path only appends to a deque (atomic under the GIL) and wakes the writer for the first
        # record of a window: a queue.Queue's locks and conditions on every record cost more than the record.
        self._pending: deque[DecidedRequest] = deque()
        self._wake = threading.Event()  # a window has begun, or close() was called
        self._closing = threading.Event()
        self._progress = threading.Condition()  # flush() waits on it for the records it saw queued
        self._queued = 0  # records accepted so far (the request path, one thread)
        self._done = 0  # records the writer has finished with (written, or failed to write)
        self._writer: threading.Thread | None = None
        if self._to_log or self._file is not None:
            self._writer = threading.Thread(target=self._write_queued, name="decision-log", daemon=True)
            self._writer.start()

    def __call__(self, decided: DecidedRequest) -> None:
        """Queue the record (the CSR and the issued chain are the mirror's, not logged). Called on the event loop's
        thread only: the counters below have one writer."""
        if self._writer is None:
            return
        if len(self._pending) >= self._max_queued:
            self._dropped.inc()
            return
        self._pending.append(decided)
        self._queued += 1
        if not self._wake.is_set():
            self._wake.set()

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        if self._writer is None:
            return
        target = self._queued
        with self._progress:
            self._progress.wait_for(lambda: self._done >= target or self._writer is None)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        if self._writer is not None:
            self._closing.set()
            self._wake.set()
            self._writer.join()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_queued(self) -> None:
        while True:
            self._wake.wait()
            if self._linger > 0 and not self._closing.is_set():
                # one wait for the whole window, not one wake-up per record; close() cuts it short
                self._closing.wait(self._linger)
            self._wake.clear()  # before taking the window: a record appended after this wakes the next one
            while self._pending:
                window = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
                try:
                    self._write(window)
                except Exception:  # a window that cannot be written must not stop the ones after it
                    logger.bind(event="decision_record_failed").exception("decision records not written")
                with self._progress:
                    self._done += len(window)
                    self._progress.notify_all()
            if self._closing.is_set() and not self._pending:
                return

    def _write(self, window: list[DecidedRequest]) -> None:
        if not window:
            return
        records: list[dict[str, Any]] = [
            decision_record(
                pending.decision_id,
                pending.caller,
                pending.request,
                pending.decision,
                issued_not_after=pending.issued_not_after,
            )
            for pending in window
        ]
        lines = [json.dumps(r, separators=(",", ":"), default=str) for r in records]  # serialised once
        if self._to_log:
            granted: list[str] = []
            for pending, record, line in zip(window, records, lines, strict=True):
                if pending.decision.allowed:
                    granted.append(line)
                    continue
                # written on this thread, outside the request's log context: the request id is bound here
                logger.bind(event="decision", request_id=pending.decision_id, record=record).info(
                    "{} {} {}", record.get("decision"), pending.caller.spiffe_id, pending.decision.reason
                )
            if granted:
                ids = ", ".join(p.caller.spiffe_id for p in window if p.decision.allowed)
                logger.bind(event="decisions", records=f"[{','.join(granted)}]").info(
                    "granted {} certificate{}: {}", len(granted), "s" if len(granted) > 1 else "", ids
                )
        if self._file is not None:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
