"""Located problems found while loading a policy set: ``file:line:col: field.path: message``.

A problem in a Kubernetes object has no text position (line 0): it reads ``IdentityPolicy ns/name: field.path: ...``.

Loading collects every problem instead of stopping at the first, so one ``policy lint`` run shows a reviewer
all that is wrong. Errors reject the whole set; warnings are reported and the set still loads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the document has no text (a Kubernetes object)
    column: int  # 1-based
    path: str  # field path inside the document, e.g. spec.rules[0].duration.max
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {self.path}: {prefix}{self.message}" if self.path else f"{where}: {prefix}{self.message}"


class PolicySetInvalid(Exception):
    """A policy set was rejected as a whole; ``problems`` holds every located error (and the warnings)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity is Severity.ERROR]
        super().__init__(f"{len(errors)} error(s) in the policy set" + "".join(f"\n  {p}" for p in errors[:20]))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]
