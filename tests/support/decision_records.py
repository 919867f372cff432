"""Reading a server's ``--decision-log`` file. Records are written off the request path (a writer thread), so a
test waits for the record of its call instead of reading the file the moment the call returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for


class DecisionRecords:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]  # a line still being written is skipped

    def count(self) -> int:
        return len(self.all())

    def after(self, count: int) -> dict[str, Any]:
        """The first record written after the first ``count`` (waits for it)."""
        wait_for(lambda: self.count() > count, f"decision record #{count + 1} in {self.path}")
        return self.all()[count]
