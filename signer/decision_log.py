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
import queue
import threading
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
        self._linger = linger_seconds
        self._closing = threading.Event()
        self._queue: queue.Queue[DecidedRequest | None] = queue.Queue(max_queued)  # None: finish
        self._writer: threading.Thread | None = None
        if self._to_log or self._file is not None:
            self._writer = threading.Thread(target=self._write_queued, name="decision-log", daemon=True)
            self._writer.start()

    def __call__(self, decided: DecidedRequest) -> None:
        """Queue the record (the CSR and the issued chain are the mirror's, not logged)."""
        if self._writer is None:
            return
        try:
            self._queue.put_nowait(decided)
        except queue.Full:
            self._dropped.inc()

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        if self._writer is not None:
            self._queue.join()

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        if self._writer is not None:
            self._closing.set()
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_queued(self) -> None:
        finished = False
        while not finished:
            window, finished = self._next_window()
            try:
                self._write(window)
            except Exception:  # a window that cannot be written must not stop the ones after it
                logger.bind(event="decision_record_failed").exception("decision records not written")
            for _ in range(len(window) + finished):  # the records, and close()'s None
                self._queue.task_done()

    def _next_window(self) -> tuple[list[DecidedRequest], bool]:
        """The records of one window (blocks for the first), and whether ``close()`` asked the writer to finish."""
        first = self._queue.get()
        if first is None:
            return [], True
        window = [first]
        if self._linger > 0:
            # one wait for the whole window, not one wake-up per record: the request path's put() then never
            # hands the GIL to this thread record by record. close() cuts the wait short.
            self._closing.wait(self._linger)
        while len(window) < MAX_BATCH:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is None:
                return window, True
            window.append(pending)
        return window, False

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
