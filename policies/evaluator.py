"""The decision procedure of policy-format.md §3, as a pure function of (set, caller, request, clock, CA).

Steps: 0 prechecks and impersonation, 1 select applicable policies, 2 Deny rules override, 3/4 the first granting
Allow rule in (priority desc, name, rule index) order, 5 AND-ed limits, 6 the CA's notAfter, 7 default deny with the
closest rule, 8 the Audit-mode shadow. Step 8 evaluates the enforced policies plus one Audit-mode policy at a time,
so each finding names the policy that would change the answer; findings never change the response.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from policies.context import EvaluationContext, LabelsUnavailable, NamespaceLabels
from policies.documents import Mode, Policy, Rule
from policies.durations import format_duration
from policies.model import AuditFinding, Caller, Decision, IssuanceRequest, Outcome, Verdict
from policies.policy_set import PolicySet
from policies.precheck import deny, precheck
from policies.rules import RuleResult, check_allow, check_deny

GRANTED = "GRANTED"


@dataclass(frozen=True, slots=True)
class Selection:
    """Step 1's answer: the policies that apply, split by mode."""

    enforced: tuple[Policy, ...]
    audited: tuple[Policy, ...]
    audit_errors: tuple[AuditFinding, ...] = ()


def prepare(
    policy_set: PolicySet,
    caller: Caller,
    request: IssuanceRequest,
    *,
    now: datetime,
    ca_not_after: datetime | None,
    namespace_labels: NamespaceLabels | None,
) -> EvaluationContext | Decision:
    """Step 0: impersonation, the shared prechecks and the non-positive duration rule."""
    settings = policy_set.settings
    node = caller.node_principal
    impersonating = node is not None and node != f"{caller.namespace}/{caller.service_account}"
    if impersonating and node not in settings.node_service_accounts:
        return deny(
            Outcome.PERMISSION_DENIED,
            "IMPERSONATION_NOT_ALLOWED",
            f"{node} may not request certificates for {caller.namespace}/{caller.service_account}: "
            "it is not in settings.impersonation.nodeServiceAccounts",
        )
    checked = precheck(caller, request, policy_set.precheck_settings)
    if isinstance(checked, Decision):
        return checked
    if request.validity_seconds <= 0 and settings.non_positive == "Deny":
        return deny(
            Outcome.INVALID_ARGUMENT,
            "INVALID_DURATION",
            f"requested validity {request.validity_seconds}s is not positive (settings.duration.nonPositive: Deny)",
        )
    return EvaluationContext(
        caller,
        request,
        checked,
        now=now,
        ca_not_after=ca_not_after,
        primary_trust_domain=settings.trust_domain,
        cluster_domain=settings.cluster_domain,
        namespace_labels=namespace_labels,
    )


def select(policy_set: PolicySet, ctx: EvaluationContext) -> Selection:
    """Step 1. Raises LabelsUnavailable when an Enforce-mode policy needs labels that are not synced."""
    enforced: list[Policy] = []
    audited: list[Policy] = []
    errors: list[AuditFinding] = []
    for policy in policy_set.candidates(ctx.caller.namespace):
        if policy.expires_at is not None and ctx.now >= policy.expires_at:
            continue
        if policy.mode is Mode.ENFORCE:
            if not policy.subjects.check(ctx, ""):
                enforced.append(policy)
            continue
        try:
            if not policy.subjects.check(ctx, ""):
                audited.append(policy)
        except LabelsUnavailable as exc:
            errors.append(AuditFinding(policy.name, None, "AUDIT_EVALUATION_ERROR", str(exc)))
    return Selection(tuple(enforced), tuple(audited), tuple(errors))


def evaluate(
    policy_set: PolicySet,
    caller: Caller,
    request: IssuanceRequest,
    *,
    now: datetime,
    ca_not_after: datetime | None,
    namespace_labels: NamespaceLabels | None = None,
) -> Decision:
    """The decision for one request. Pure: the same inputs always give the same decision."""
    prepared = prepare(
        policy_set, caller, request, now=now, ca_not_after=ca_not_after, namespace_labels=namespace_labels
    )
    if isinstance(prepared, Decision):
        return replace(prepared, policy_set_revision=policy_set.revision)
    ctx = prepared
    try:
        selection = select(policy_set, ctx)
        decision = decide_over(policy_set, ctx, selection.enforced)
    except LabelsUnavailable as exc:
        unavailable = deny(Outcome.UNAVAILABLE, "EVALUATION_ERROR", f"{exc}; retry shortly")
        return replace(unavailable, policy_set_revision=policy_set.revision)
    findings = list(selection.audit_errors)
    for policy in selection.audited:
        findings.extend(_audit(policy_set, ctx, selection.enforced, policy, decision))
    return replace(decision, audit_findings=tuple(findings), policy_set_revision=policy_set.revision)


def decide_over(policy_set: PolicySet, ctx: EvaluationContext, policies: tuple[Policy, ...]) -> Decision:
    """Steps 2 to 7 over ``policies`` (already applicable, in step 4's order)."""
    denied = [result for policy in policies for rule in policy.deny_rules if (result := check_deny(rule, ctx)).ok]
    if denied:
        denied.sort(key=lambda r: (r.rule.policy, r.rule.index))
        first = denied[0].rule
        names = tuple(r.rule.qualified_name for r in denied)
        return Decision(
            verdict=Verdict.DENY,
            outcome=Outcome.PERMISSION_DENIED,
            reason="DENIED_BY_RULE",
            message=first.message or f"denied by {first.qualified_name}",
            deny_rules=names,
            details={"matched": first.qualified_name},
        )
    grant = _first_grant(policy_set, ctx, policies)
    if grant is None:
        return _no_match(policy_set, ctx, policies)
    return _limit_and_issue(policy_set, ctx, policies, grant)


def _first_grant(policy_set: PolicySet, ctx: EvaluationContext, policies: tuple[Policy, ...]) -> RuleResult | None:
    for policy in policies:
        for rule in policy.allow_rules:
            if (result := check_allow(rule, ctx)).ok:
                return result
    if policy_set.fallback_rule is not None and (result := check_allow(policy_set.fallback_rule, ctx)).ok:
        return result
    return None


def allow_rules(policy_set: PolicySet, policies: tuple[Policy, ...]) -> list[Rule]:
    rules = [rule for policy in policies for rule in policy.allow_rules]
    if policy_set.fallback_rule is not None:
        rules.append(policy_set.fallback_rule)
    return rules


def _no_match(policy_set: PolicySet, ctx: EvaluationContext, policies: tuple[Policy, ...]) -> Decision:
    """Step 7: name the closest rule (fewest failed conditions, ties in step 4's order) and its first failure."""
    closest: RuleResult | None = None
    closest_failures = 0
    for rule in allow_rules(policy_set, policies):
        if rule.subjects is not None and rule.subjects.check(ctx, "rule."):
            continue  # the rule is not about this caller
        result = check_allow(rule, ctx, exhaustive=True)
        failures = len(result.failures)
        if closest is None or failures < closest_failures:
            closest, closest_failures = result, failures
    who = f"{ctx.caller.namespace}/{ctx.caller.service_account}"
    if closest is None:
        applied = ", ".join(p.name for p in policies) or "none"
        return Decision(
            verdict=Verdict.DENY,
            outcome=Outcome.PERMISSION_DENIED,
            reason="NO_MATCHING_RULE",
            message=f"no Allow rule applies to {who} (applicable policies: {applied})",
            details={"subReason": "NO_APPLICABLE_RULE"},
        )
    first = closest.failures[0]
    name = closest.rule.qualified_name
    return Decision(
        verdict=Verdict.DENY,
        outcome=Outcome.PERMISSION_DENIED,
        reason="NO_MATCHING_RULE",
        message=f"closest rule {name}: {first.sentence}",
        details={
            "subReason": first.code,
            "closest": name,
            "matched": name,
            "closestFailures": [c.as_dict() for c in closest.failures],
        },
    )


@dataclass(frozen=True, slots=True)
class _Bound:
    name: str
    minimum: int | None
    maximum: int | None
    on_exceed: str
    on_below: str


def _limit_and_issue(
    policy_set: PolicySet, ctx: EvaluationContext, policies: tuple[Policy, ...], grant: RuleResult
) -> Decision:
    """Steps 5 and 6: intersect the limits with the settings ceiling, then cap at the CA's notAfter."""
    settings = policy_set.settings
    granted_by = grant.rule.qualified_name
    limits = [p.limits for p in policies if p.limits is not None]
    for limit in limits:
        refusal = limit.key.refusal(ctx.request.key) if limit.key is not None else None
        if refusal is not None:
            return deny(
                Outcome.PERMISSION_DENIED,
                "KEY_NOT_ALLOWED",
                f"{refusal} ({limit.qualified_name})",
                matched=limit.qualified_name,
                grantedBy=granted_by,
            )
    bounds = [_Bound("settings", settings.duration_min or None, settings.duration_max, "Clamp", "Deny")]
    bounds += [
        _Bound(limit.qualified_name, limit.duration_min, limit.duration_max, limit.on_exceed, limit.on_below)
        for limit in limits
    ]
    low = max((b.minimum for b in bounds if b.minimum is not None), default=0)
    high = min(b.maximum for b in bounds if b.maximum is not None)
    applied = tuple(limit.qualified_name for limit in limits)
    flags = list(grant.flags)
    duration = grant.duration
    assert duration is not None
    if low > high:
        return deny(
            Outcome.PERMISSION_DENIED,
            "DURATION_RANGE_EMPTY",
            f"the limits leave no duration: min {format_duration(low)} > max {format_duration(high)}",
            limits=list(applied),
        )
    bound_by: list[str] = []
    if duration > high:
        binding = [b for b in bounds if b.maximum == high]
        denier = next((b for b in binding if b.on_exceed == "Deny"), None)
        if denier is not None and not grant.defaulted:
            return deny(
                Outcome.PERMISSION_DENIED,
                "DURATION_TOO_LONG",
                f"{format_duration(duration)} > max {format_duration(high)} ({denier.name}, onExceed: Deny)",
                matched=denier.name,
                grantedBy=granted_by,
            )
        duration = high
        flags.append("DURATION_CLAMPED")
        bound_by = [b.name for b in binding]
    elif duration < low:
        binding = [b for b in bounds if b.minimum == low]
        denier = next((b for b in binding if b.on_below == "Deny"), None)
        if denier is not None and not grant.defaulted:
            return deny(
                Outcome.PERMISSION_DENIED,
                "DURATION_TOO_SHORT",
                f"{format_duration(duration)} below min {format_duration(low)} ({denier.name}, onBelow: Deny)",
                matched=denier.name,
                grantedBy=granted_by,
            )
        duration = low
        flags.append("DURATION_RAISED")
        bound_by = [b.name for b in binding]

    assert grant.rule.duration is not None
    effective_min = max(low, grant.rule.duration.minimum)
    not_after = ctx.now + timedelta(seconds=duration)
    ca_not_after = ctx.ca_not_after
    if ca_not_after is not None and not_after > ca_not_after:
        remaining = int((ca_not_after - ctx.now).total_seconds())
        if remaining <= 0:
            return deny(Outcome.UNAVAILABLE, "CA_VALIDITY_INSUFFICIENT", "the signing CA has expired", alert=True)
        if settings.ca_on_exceed == "Deny":
            return deny(
                Outcome.UNAVAILABLE,
                "CA_VALIDITY_INSUFFICIENT",
                f"{format_duration(duration)} would outlive the CA ({format_duration(remaining)} left; "
                "settings.caValidity.onExceed: Deny)",
            )
        if remaining < max(effective_min, 1):
            return deny(
                Outcome.UNAVAILABLE,
                "CA_VALIDITY_INSUFFICIENT",
                f"the CA has {format_duration(remaining)} left, below the minimum {format_duration(effective_min)}",
                alert=True,
            )
        duration = remaining
        not_after = ctx.now + timedelta(seconds=remaining)
        flags.append("NOT_AFTER_CAPPED_BY_CA")
    details: dict[str, object] = {"matched": granted_by}
    if bound_by:
        details["boundBy"] = bound_by
    return Decision(
        verdict=Verdict.ALLOW,
        outcome=Outcome.OK,
        reason=GRANTED,
        message=f"granted by {granted_by}",
        uris=tuple(str(u) for u in ctx.uris),
        dns_names=ctx.request.dns_names,
        duration_seconds=duration,
        not_after=not_after,
        granted_by=granted_by,
        flags=tuple(dict.fromkeys(flags)),
        limits_applied=applied,
        details=details,
    )


def _audit(
    policy_set: PolicySet,
    ctx: EvaluationContext,
    enforced: tuple[Policy, ...],
    policy: Policy,
    decision: Decision,
) -> list[AuditFinding]:
    """Step 8 for one Audit-mode policy: what would change if it were enforced alongside the others."""
    shadow_policies = tuple(sorted((*enforced, policy), key=lambda p: p.order))
    try:
        shadow = decide_over(policy_set, ctx, shadow_policies)
    except LabelsUnavailable as exc:
        return [AuditFinding(policy.name, None, "AUDIT_EVALUATION_ERROR", str(exc))]
    rule = _rule_of(policy, shadow)
    if decision.allowed and not shadow.allowed:
        text = f"would deny: {shadow.reason}: {shadow.message}"
        return [AuditFinding(policy.name, rule, "AUDIT_WOULD_DENY", text)]
    if not decision.allowed and shadow.allowed:
        return [AuditFinding(policy.name, rule, "AUDIT_WOULD_ALLOW", f"would allow: {shadow.message}")]
    if decision.allowed and shadow.allowed and shadow.duration_seconds != decision.duration_seconds:
        assert shadow.duration_seconds is not None and decision.duration_seconds is not None
        finding = "AUDIT_WOULD_CLAMP" if shadow.duration_seconds < decision.duration_seconds else "AUDIT_WOULD_EXTEND"
        text = (
            f"would issue {shadow.duration_seconds}s ({format_duration(shadow.duration_seconds)}) instead of "
            f"{decision.duration_seconds}s ({format_duration(decision.duration_seconds)})"
        )
        return [AuditFinding(policy.name, rule, finding, text)]
    return []


def _rule_of(policy: Policy, shadow: Decision) -> str | None:
    """The part of ``policy`` that produced the shadow decision: a rule name or ``limits``."""
    prefix = policy.name + "/"
    candidates = [*shadow.deny_rules, shadow.granted_by or "", str(shadow.details.get("matched", ""))]
    candidates += [str(name) for name in shadow.details.get("boundBy", [])]  # type: ignore[attr-defined]
    for name in candidates:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return "limits" if policy.limits is not None and not policy.rules else None


def matched_rule(decision: Decision) -> str | None:
    """The rule a report names: the granting rule, the first Deny rule, the binding limit or the closest rule."""
    if decision.granted_by:
        return decision.granted_by
    if decision.deny_rules:
        return decision.deny_rules[0]
    matched = decision.details.get("matched")
    return str(matched) if matched else None
