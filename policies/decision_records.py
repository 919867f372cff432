"""Decision records (policy-format.md §3 "Outputs"): one JSON object per request, for logs and --decision-log.

A record says who asked for what, what was decided and by which rule, what was issued, what Audit-mode policies
would have done, which policy-set revision decided (and, with the Kubernetes source, which object and generation
held the matching policy), so an auditor can replay the decision offline with
``meshsigner policy explain`` against that revision.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from policies.decider import Caller, Decision, IssuanceRequest, matched_rule

RECORD_VERSION = 1


def new_decision_id() -> str:
    return uuid.uuid4().hex


def decision_record(
    decision_id: str,
    caller: Caller,
    request: IssuanceRequest,
    decision: Decision,
    *,
    issued_not_after: datetime | None = None,
    at: datetime | None = None,
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A JSON-serialisable record. ``issued_not_after`` is the certificate's real notAfter when the signer has it;
    ``at`` the decision time; ``trace`` an explain trace when explain logging is on."""
    not_after = issued_not_after or decision.not_after
    issued = (
        {
            "uris": list(decision.uris),
            "dnsNames": list(decision.dns_names),
            "durationSeconds": decision.duration_seconds,
            "notAfter": not_after.isoformat() if not_after else None,
        }
        if decision.allowed
        else None
    )
    closest = decision.details.get("closest")
    return {
        "recordVersion": RECORD_VERSION,
        "decisionId": decision_id,
        "caller": {
            "trustDomain": caller.trust_domain,
            "namespace": caller.namespace,
            "serviceAccount": caller.service_account,
            "principal": caller.principal,
            "podName": caller.pod_name,
            "podUID": caller.pod_uid,
            "nodePrincipal": caller.node_principal,
        },
        "request": {
            "uris": list(request.uris),
            "dnsNames": list(request.dns_names),
            "ipAddresses": list(request.ip_addresses),
            "emailAddresses": list(request.email_addresses),
            "commonName": request.common_name,
            "key": request.key,
            "usages": list(request.usages),
            "validitySeconds": request.validity_seconds,
            "isCA": request.is_ca,
        },
        "decision": decision.verdict.value,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "reasons": reason_codes(decision),
        "message": decision.message,
        "matched": matched_rule(decision),
        "grantedBy": decision.granted_by,
        "denyRules": list(decision.deny_rules),
        "limitsApplied": list(decision.limits_applied),
        "issued": issued,
        "auditFindings": [
            {"policy": f.policy, "rule": f.rule, "finding": f.finding, "message": f.message}
            for f in decision.audit_findings
        ],
        "policySetRevision": decision.policy_set_revision,
        **({"time": at.isoformat()} if at is not None else {}),
        **({"closestRule": closest} if closest else {}),
        # the Kubernetes object (kind, namespace, name, generation) of the policy that matched: kubernetes source
        **({"policyObject": ref} if (ref := decision.details.get("policyObject")) is not None else {}),
        **({"shadow": shadow} if (shadow := decision.details.get("shadow")) is not None else {}),
        **({"trace": trace} if trace is not None else {}),
    }


def reason_codes(decision: Decision) -> list[str]:
    """The primary reason, the sub-reason of a default deny, then the flags: GRANTED, DURATION_CLAMPED, ..."""
    codes = [decision.reason]
    sub = decision.details.get("subReason")
    if sub:
        codes.append(str(sub))
    codes.extend(decision.flags)
    return codes
