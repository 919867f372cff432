"""The front door's side of the audit mirror: every recorded decision (allowed or refused by policy) goes to the
decision log as before and, as a :class:`bridge.audit_mirror.MirrorEntry`, to the mirror's queue.

The front door hands each decision over with the CSR as received and, for an issued certificate, the backend's
answer (the chain, and the API object that asked for it). Queuing never blocks: the workload's answer does not
wait for the mirror.
"""

from __future__ import annotations

from bridge.audit_mirror import AuditMirror, MirrorEntry
from signer.decided_request import DecidedRequest, DecisionRecorder


def mirror_entry(decided: DecidedRequest) -> MirrorEntry:
    decision, signed = decided.decision, decided.signed
    rule = decision.granted_by or ",".join(decision.deny_rules)
    return MirrorEntry(
        decision_id=decided.decision_id,
        csr_pem=decided.csr_pem,
        caller=decided.caller.principal,
        requested_identities=(*decided.request.uris, *decided.request.dns_names),
        allowed=decision.allowed,
        reason=decision.reason,
        rule=rule,
        message=decision.message,
        node_principal=decided.caller.node_principal or "",
        chain_pem="".join(signed.chain_pems) if decision.allowed and signed is not None else "",
        mirrors=signed.object_name if signed is not None else "",
    )


class MirroringRecorder:
    """A DecisionRecorder that also mirrors each decision (``inner``: the decision log, called first)."""

    def __init__(self, inner: DecisionRecorder | None, mirror: AuditMirror) -> None:
        self._inner = inner
        self._mirror = mirror

    def __call__(self, decided: DecidedRequest) -> None:
        if self._inner is not None:
            self._inner(decided)
        self._mirror.submit(mirror_entry(decided))
