"""The front door's side of the audit mirror: every recorded decision (allowed or refused by policy) goes to the
decision log as before and, as a :class:`bridge.audit_mirror.MirrorEntry`, to the mirror's queue.

The front door hands each decision over with the CSR as received and, for an issued certificate, the backend's
answer (the chain, and the API object that asked for it). Queuing never blocks: the workload's answer does not
wait for the mirror.
"""

from __future__ import annotations

from datetime import datetime

from bridge.audit_mirror import AuditMirror, MirrorEntry
from bridge.signing import SignedChain
from policies import Caller, Decision, IssuanceRequest
from signer.service import DecisionRecorder


def mirror_entry(
    decision_id: str,
    caller: Caller,
    request: IssuanceRequest,
    decision: Decision,
    *,
    csr_pem: str,
    signed: SignedChain | None,
) -> MirrorEntry:
    rule = decision.granted_by or ",".join(decision.deny_rules)
    return MirrorEntry(
        decision_id=decision_id,
        csr_pem=csr_pem,
        caller=caller.principal,
        requested_identities=(*request.uris, *request.dns_names),
        allowed=decision.allowed,
        reason=decision.reason,
        rule=rule,
        message=decision.message,
        node_principal=caller.node_principal or "",
        chain_pem="".join(signed.chain_pems) if decision.allowed and signed is not None else "",
        mirrors=signed.object_name if signed is not None else "",
    )


class MirroringRecorder:
    """A DecisionRecorder that also mirrors each decision (``inner``: the decision log, called first)."""

    def __init__(self, inner: DecisionRecorder | None, mirror: AuditMirror) -> None:
        self._inner = inner
        self._mirror = mirror

    def __call__(
        self,
        decision_id: str,
        caller: Caller,
        request: IssuanceRequest,
        decision: Decision,
        issued_not_after: datetime | None,
        *,
        csr_pem: str,
        signed: SignedChain | None,
    ) -> None:
        if self._inner is not None:
            self._inner(decision_id, caller, request, decision, issued_not_after, csr_pem=csr_pem, signed=signed)
        self._mirror.submit(mirror_entry(decision_id, caller, request, decision, csr_pem=csr_pem, signed=signed))
