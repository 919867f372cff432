"""What ``/readyz`` answers: ready only when the server can actually issue (docs/robustness.md §Obligations O8)."""

from __future__ import annotations

from typing import Protocol


class ReadinessCheck(Protocol):
    """A part the server needs (backend, authenticator, policy, caches, tasks); ``reason`` is optional detail."""

    @property
    def ready(self) -> bool: ...


class Readiness:
    """The named parts' readiness plus whether the gRPC listener is up; called with no argument, it lists the
    reasons for not being ready (empty when ready)."""

    def __init__(self, checks: dict[str, ReadinessCheck]) -> None:
        self._checks = dict(checks)
        self.listening = False
        self.stopping = False  # set first on SIGTERM, so load balancers stop sending before the listener closes

    def __call__(self) -> list[str]:
        if self.stopping:
            return ["shutting down"]
        reasons = []
        for name, part in self._checks.items():
            if not part.ready:
                detail = getattr(part, "reason", "")  # optional: not every part explains itself
                reasons.append(f"{name} not ready" + (f" ({detail})" if detail else ""))
        if not self.listening:
            reasons.append("not listening")
        return reasons
