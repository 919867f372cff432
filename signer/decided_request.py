"""One decided request as the recorders see it (the decision log; the audit mirror): who asked for what, the
decision, the CSR as received and, when it was issued, the backend's answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bridge.signing import SignedChain
from policies import Caller, Decision, IssuanceRequest


@dataclass(frozen=True, slots=True)
class DecidedRequest:
    decision_id: str
    caller: Caller
    request: IssuanceRequest
    decision: Decision
    csr_pem: str = ""
    signed: SignedChain | None = None  # None: refused, or allowed but not issued

    @property
    def issued_not_after(self) -> datetime | None:
        """The issued certificate's real notAfter (None without one)."""
        return self.signed.leaf.not_valid_after_utc if self.signed is not None else None


DecisionRecorder = Callable[[DecidedRequest], None]
"""Records one decided request; must not block (the workload's answer does not wait for it)."""
