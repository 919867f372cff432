"""Decision records: one JSON-serialisable dict per request, for logs, ``--decision-log`` and audits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from policies.model import Caller, Decision, IssuanceRequest


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def decision_record(
    decision_id: str,
    caller: Caller,
    request: IssuanceRequest,
    decision: Decision,
    *,
    issued_not_after: datetime | None = None,
) -> dict[str, Any]:
    caller_record: dict[str, Any] = {
        "namespace": caller.namespace,
        "serviceAccount": caller.service_account,
        "spiffeId": caller.spiffe_id,
    }
    if caller.pod_name:
        caller_record["podName"] = caller.pod_name
    if caller.node_principal:
        caller_record["nodePrincipal"] = caller.node_principal
    return {
        "decisionId": decision_id,
        "caller": caller_record,
        "request": {
            "uris": list(request.uris),
            "dnsNames": list(request.dns_names),
            "key": request.key,
            "validitySeconds": request.validity_seconds,
            "impersonatedIdentity": request.impersonated_identity,
        },
        "decision": decision.verdict.value,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "reasons": [decision.reason, *decision.flags],
        "message": decision.message,
        "grantedBy": decision.granted_by,
        "denyRules": list(decision.deny_rules),
        "limitsApplied": list(decision.limits_applied),
        "durationSeconds": decision.duration_seconds,
        "notAfter": _iso(decision.not_after),
        "issuedNotAfter": _iso(issued_not_after),
        "auditFindings": [
            {"policy": f.policy, "rule": f.rule, "finding": f.finding, "message": f.message}
            for f in decision.audit_findings
        ],
        "policySetRevision": decision.policy_set_revision,
    }
