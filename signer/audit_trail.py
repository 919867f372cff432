"""The front door's side of the audit mirror: every recorded decision (allowed or refused by policy) goes to the
decision log as before and, as a :class:`bridge.audit_mirror.MirrorEntry`, to the mirror's queue.

The CSR, the created object's name and the issued chain come from the request's trail (bridge/request_trail.py):
the front door notes the decision id and CSR there with ``begin_request`` right after parsing the CSR, the backend
wrapper notes the chain. Queuing never blocks: the workload's answer does not wait for the mirror.
"""

from __future__ import annotations

from datetime import datetime

from bridge.audit_mirror import AuditMirror, MirrorEntry
from bridge.request_trail import current_trail
from policies import Caller, Decision, IssuanceRequest
from signer.service import DecisionRecorder


def mirror_entry(decision_id: str, caller: Caller, request: IssuanceRequest, decision: Decision) -> MirrorEntry:
    trail = current_trail()
    rule = decision.granted_by or ",".join(decision.deny_rules)
    return MirrorEntry(
        decision_id=decision_id,
        csr_pem=trail.csr_pem,
        caller=caller.principal,
        requested_identities=(*request.uris, *request.dns_names),
        allowed=decision.allowed,
        reason=decision.reason,
        rule=rule,
        message=decision.message,
        node_principal=caller.node_principal or "",
        chain_pem=trail.chain_pem if decision.allowed else "",
        mirrors=trail.object_name,
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
    ) -> None:
        if self._inner is not None:
            self._inner(decision_id, caller, request, decision, issued_not_after)
        self._mirror.submit(mirror_entry(decision_id, caller, request, decision))
