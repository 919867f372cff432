"""Explain: why a request got its decision, per policy and per rule, with expected vs actual for every condition.

The decision itself always comes from ``evaluator.evaluate``; explain then walks every policy of the set (also
those the namespace index skips, Audit- and Disabled-mode ones) with exhaustive checks, so it answers "why was I
not matched?" as well as "what granted this?".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clocks.durations import format_duration
from policies.compiled import Effect, Limits, Mode, Policy, Rule
from policies.context import Check, EvaluationContext, LabelsUnavailable, NamespaceLabels
from policies.decider import Caller, Decision, IssuanceRequest, matched_rule
from policies.evaluator import evaluate, prepare
from policies.policy_set import PolicySet
from policies.rule_checks import check_allow, check_deny


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    policies: tuple[dict[str, Any], ...]  # the per-policy trace, in evaluation order
    stopped_at_step0: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**decision_summary(self.decision), "trace": list(self.policies)}


def decision_summary(decision: Decision) -> dict[str, Any]:
    """The fields explain and ``policy test`` report: decision, reason, matched, durationSeconds, ..."""
    return {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "subReason": decision.details.get("subReason"),
        "outcome": decision.outcome.value,
        "message": decision.message,
        "matched": matched_rule(decision),
        "durationSeconds": decision.duration_seconds,
        "notAfter": decision.not_after.isoformat() if decision.not_after else None,
        "uris": list(decision.uris),
        "dnsNames": list(decision.dns_names),
        "flags": list(decision.flags),
        "denyRules": list(decision.deny_rules),
        "limitsApplied": list(decision.limits_applied),
        "auditFindings": [
            {"policy": f.policy, "rule": f.rule, "finding": f.finding, "message": f.message}
            for f in decision.audit_findings
        ],
        "policySetRevision": decision.policy_set_revision,
    }


def explain(
    policy_set: PolicySet,
    caller: Caller,
    request: IssuanceRequest,
    *,
    now: datetime,
    ca_not_after: datetime | None,
    namespace_labels: NamespaceLabels | None = None,
) -> Explanation:
    decision = evaluate(
        policy_set, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=namespace_labels
    )
    prepared = prepare(
        policy_set, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=namespace_labels
    )
    if isinstance(prepared, Decision):
        return Explanation(decision, (), stopped_at_step0=True)
    return Explanation(decision, tuple(_trace_policy(policy, prepared) for policy in policy_set.policies))


def _trace_policy(policy: Policy, ctx: EvaluationContext) -> dict[str, Any]:
    entry: dict[str, Any] = {"policy": policy.name, "mode": policy.mode.value, "priority": policy.priority}
    if policy.mode is Mode.DISABLED:
        return {**entry, "applies": False, "why": "mode is Disabled"}
    if policy.expires_at is not None and ctx.now >= policy.expires_at:
        return {**entry, "applies": False, "why": f"expired at {policy.expires_at.isoformat()}"}
    try:
        subject_checks = policy.subjects.check(ctx, "", exhaustive=True)
    except LabelsUnavailable as exc:
        return {**entry, "applies": False, "why": f"evaluation error: {exc}"}
    subjects = [c.as_dict() for c in subject_checks]
    failed = next((c for c in subject_checks if not c.held), None)
    if failed is not None:
        why = f"{failed.condition}: expected {failed.expected}, actual {failed.actual}"
        return {**entry, "applies": False, "subjects": subjects, "why": why}
    rules = [_trace_rule(rule, ctx) for rule in policy.rules]
    limits = {"limits": _describe_limits(policy.limits)} if policy.limits is not None else {}
    return {**entry, "applies": True, "subjects": subjects, "rules": rules, **limits}


def _describe_limits(limits: Limits) -> str:
    described = []
    if limits.duration_min is not None:
        described.append(f"min {format_duration(limits.duration_min)} (onBelow {limits.on_below})")
    if limits.duration_max is not None:
        described.append(f"max {format_duration(limits.duration_max)} (onExceed {limits.on_exceed})")
    if limits.key is not None:
        described.append(f"key {limits.key.describe()}")
    return "; ".join(described)


def _trace_rule(rule: Rule, ctx: EvaluationContext) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": rule.name, "effect": rule.effect.value}
    try:
        result = check_allow(rule, ctx, exhaustive=True) if rule.effect is Effect.ALLOW else check_deny(rule, ctx)
    except LabelsUnavailable as exc:
        return {**entry, "result": f"evaluation error: {exc}"}
    subjects_failed = any(not c.held and c.condition.startswith("rule.subjects") for c in result.checks)
    if subjects_failed:
        outcome = "not applicable"
    elif rule.effect is Effect.ALLOW:
        outcome = "grants" if result.ok else "does not grant"
    else:
        outcome = "matches (denies)" if result.ok else "does not match"
    granted = rule.effect is Effect.ALLOW and result.ok and result.duration is not None
    duration = {"durationSeconds": result.duration} if granted else {}
    return {**entry, "result": outcome, **duration, "conditions": [_check(c) for c in result.checks]}


def _check(check: Check) -> dict[str, object]:
    data = check.as_dict()
    if check.note and not check.held:
        data["why"] = check.note
    return data


def render_text(explanation: Explanation) -> str:
    """A reviewer-readable explanation."""
    decision = explanation.decision
    summary = decision_summary(decision)
    lines = [f"decision: {summary['decision']} {summary['reason']}" + _sub(summary), f"message: {decision.message}"]
    if summary["matched"]:
        label = "granted by" if decision.allowed else "rule"
        lines.append(f"{label}: {summary['matched']}")
    if decision.allowed:
        lines.append(f"duration: {decision.duration_seconds}s, notAfter {summary['notAfter']}")
    if decision.flags:
        lines.append("flags: " + ", ".join(decision.flags))
    if decision.deny_rules:
        lines.append("deny rules: " + ", ".join(decision.deny_rules))
    if decision.limits_applied:
        lines.append("limits applied: " + ", ".join(decision.limits_applied))
    for finding in decision.audit_findings:
        rule = f"/{finding.rule}" if finding.rule else ""
        lines.append(f"audit: {finding.finding} {finding.policy}{rule}: {finding.message}")
    lines.append(f"policy set: {decision.policy_set_revision}")
    if explanation.stopped_at_step0:
        lines.append("stopped at step 0 (prechecks): no policy was consulted")
    for policy in explanation.policies:
        lines.append("")
        state = "applies" if policy.get("applies") else f"does not apply ({policy.get('why')})"
        lines.append(f"policy {policy['policy']} ({policy['mode']}, priority {policy['priority']}): {state}")
        for rule in policy.get("rules", []):
            lines.append(f"  rule {rule['rule']} ({rule['effect']}): {rule['result']}")
            for condition in rule.get("conditions", []):
                mark = "ok  " if condition["held"] else "FAIL"
                why = f" -- {condition['why']}" if "why" in condition else ""
                lines.append(
                    f"    {mark} {condition['condition']}: expected {condition['expected']}; "
                    f"actual {condition['actual']}{why}"
                )
        if policy.get("limits"):
            lines.append(f"  limits: {policy['limits']}")
    return "\n".join(lines)


def _sub(summary: dict[str, Any]) -> str:
    return f" (sub-reason {summary['subReason']})" if summary.get("subReason") else ""
