"""Writes one structured record per decision to the log and, optionally, appended to a JSON-lines file."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import IO

from loguru import logger

from policies import Caller, Decision, IssuanceRequest, decision_record


class DecisionLog:
    def __init__(self, path: str | None = None, *, to_log: bool = True) -> None:
        # held open for the life of the server; close() releases it
        self._file: IO[str] | None = Path(path).open("a", encoding="utf-8") if path else None  # noqa: SIM115
        self._to_log = to_log  # False when the log level drops INFO: then nobody would read the record there

    def __call__(
        self,
        decision_id: str,
        caller: Caller,
        request: IssuanceRequest,
        decision: Decision,
        issued_not_after: datetime | None,
    ) -> None:
        if not self._to_log and self._file is None:
            return
        record = decision_record(decision_id, caller, request, decision, issued_not_after=issued_not_after)
        if self._to_log:
            logger.bind(event="decision", record=record).info(
                "{} {} {}", record.get("decision"), caller.spiffe_id, decision.reason
            )
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
