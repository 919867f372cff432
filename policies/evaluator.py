"""The decision procedure of policy-format.md §3, as a pure function of (set, caller, request, clock, CA).

Steps: 0 prechecks and impersonation, 1 select applicable policies, 2 Deny rules override, 3/4 the first granting
Allow rule in (priority desc, name, rule index) order, 5 AND-ed limits, 6 the CA's notAfter, 7 default deny with the
closest rule, 8 the Audit-mode shadow. Step 8 evaluates the enforced policies plus one Audit-mode policy at a time,
so each finding names the policy that would change the answer; findings never change the response.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from clocks.durations import format_duration
from policies.ca_validity import cap_to_ca
from policies.compiled import Limits, Mode, Policy, Rule
from policies.context import EvaluationContext, LabelsUnavailable, NamespaceLabels
from policies.decider import AuditFinding, Caller, Decision, IssuanceRequest, Outcome, Verdict, deny
from policies.policy_set import Applicable, PolicySet
from policies.precheck import precheck
from policies.rule_checks import CONDITION_ERROR, RuleResult, check_allow, count_failures, denies

GRANTED = "GRANTED"


@dataclass(frozen=True, slots=True)
class Selection:
    """Step 1's answer: what applies to this request, split by mode."""

    enforced: tuple[Applicable, ...]
    audited: tuple[Applicable, ...]
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
            revision=policy_set.revision,
        )
    checked = precheck(caller, request, policy_set.precheck_settings)
    if isinstance(checked, Decision):
        return checked
    if request.validity_seconds <= 0 and settings.non_positive == "Deny":
        return deny(
            Outcome.INVALID_ARGUMENT,
            "INVALID_DURATION",
            f"requested validity {request.validity_seconds}s is not positive (settings.duration.nonPositive: Deny)",
            revision=policy_set.revision,
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
        trusted_label_keys=settings.trusted_namespace_label_keys,
    )


def select(policy_set: PolicySet, ctx: EvaluationContext) -> Selection:
    """Step 1. Raises LabelsUnavailable when an Enforce-mode policy needs labels that are not synced."""
    enforced: list[Applicable] = []
    audited: list[Applicable] = []
    errors: list[AuditFinding] = []
    now = ctx.now
    for entry in policy_set.applicable(ctx):
        policy = entry.policy
        if not policy.checked_per_decision:  # no expiry and no selector: its cached subject match is the answer
            (enforced if policy.mode is Mode.ENFORCE else audited).append(entry)  # Disabled is never listed
            continue
        if policy.expires_at is not None and now >= policy.expires_at:
            continue
        if policy.mode is Mode.ENFORCE:
            if policy.subjects.dynamic_matches(ctx):
                enforced.append(entry)
            continue
        try:
            if policy.subjects.dynamic_matches(ctx):
                audited.append(entry)
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
        return prepared  # step 0 refusals already carry the revision
    ctx = prepared
    try:
        selection = select(policy_set, ctx)
        decision, grant, bounded = _decide(policy_set, ctx, selection.enforced)
    except LabelsUnavailable as exc:
        return deny(Outcome.UNAVAILABLE, "EVALUATION_ERROR", f"{exc}; retry shortly", revision=policy_set.revision)
    findings = list(selection.audit_errors)
    for entry in selection.audited:
        findings.extend(_audit(policy_set, ctx, selection.enforced, entry, decision, grant, bounded))
    # Step 8 compares against the enforced decision, so the findings make a derived one (only when there are any).
    return decision.with_audit_findings(tuple(findings)) if findings else decision


def decide_over(policy_set: PolicySet, ctx: EvaluationContext, entries: tuple[Applicable, ...]) -> Decision:
    """Steps 2 to 7 over the applicable ``entries`` (in step 4's order)."""
    return _decide(policy_set, ctx, entries)[0]


def _decide(
    policy_set: PolicySet, ctx: EvaluationContext, entries: tuple[Applicable, ...]
) -> tuple[Decision, RuleResult | None, _Bounded | None]:
    """``decide_over``, also returning the granting rule's result (None when nothing granted) and step 5's result
    for it (None unless the limits passed): the Audit shadow reuses both instead of working them out again."""
    denied = [rule for entry in entries for rule in entry.deny_rules if _denies(rule, ctx)]
    if denied:
        denied.sort(key=lambda r: (r.policy, r.index))
        certain = [r for r in denied if id(r) not in ctx.unsure_rules]
        if certain:
            first = certain[0]
            reason, message = "DENIED_BY_RULE", first.message or f"denied by {first.qualified_name}"
        else:  # only rules whose condition did not evaluate: they may apply, so they deny
            first = denied[0]
            reason, message = CONDITION_ERROR, _unsure_message(first, ctx)
        refused = Decision(
            verdict=Verdict.DENY,
            outcome=Outcome.PERMISSION_DENIED,
            reason=reason,
            message=message,
            deny_rules=tuple(r.qualified_name for r in denied),
            policy_set_revision=policy_set.revision,
            details={"matched": first.qualified_name},
        )
        return refused, None, None
    grant = _first_grant(policy_set, ctx, entries)
    if grant is None:
        return _no_match(policy_set, ctx, entries), None, None
    bounded = _bounded(policy_set, ctx, entries, grant)
    decision = _limit_and_issue(policy_set, ctx, entries, grant, bounded)
    return decision, grant, bounded if isinstance(bounded, _Bounded) else None


def _first_grant(policy_set: PolicySet, ctx: EvaluationContext, entries: tuple[Applicable, ...]) -> RuleResult | None:
    for entry in entries:
        for rule in entry.allow_rules:
            if (result := _grants(rule, ctx)).ok:
                return result
    if policy_set.fallback_rule is not None and (result := _grants(policy_set.fallback_rule, ctx)).ok:
        return result
    return None


def _grants(rule: Rule, ctx: EvaluationContext) -> RuleResult:
    """check_allow, memoised for the decision (the Audit shadow asks again)."""
    result = ctx.allow_results.get(id(rule))
    if result is None:
        result = ctx.allow_results[id(rule)] = check_allow(rule, ctx, static_subjects_checked=True)
    return result


def _denies(rule: Rule, ctx: EvaluationContext) -> bool:
    result = ctx.deny_matches.get(id(rule))
    if result is None:
        result = ctx.deny_matches[id(rule)] = denies(rule, ctx, static_subjects_checked=True)
    return result


def _no_match(policy_set: PolicySet, ctx: EvaluationContext, entries: tuple[Applicable, ...]) -> Decision:
    """Step 7: name the closest rule (fewest failed conditions, ties in step 4's order) and its first failure."""
    rules = [rule for entry in entries for rule in entry.allow_rules]
    if policy_set.fallback_rule is not None:
        rules.append(policy_set.fallback_rule)
    unsure = next((rule for rule in rules if id(rule) in ctx.unsure_rules), None)
    if unsure is not None:  # it would have granted but for a condition that did not evaluate
        return Decision(
            verdict=Verdict.DENY,
            outcome=Outcome.PERMISSION_DENIED,
            reason=CONDITION_ERROR,
            message=_unsure_message(unsure, ctx),
            policy_set_revision=policy_set.revision,
            details={"matched": unsure.qualified_name, "closest": unsure.qualified_name},
        )
    best: Rule | None = None
    best_failures = 0
    for rule in rules:  # already in step 4's order, so the first of equals wins the tie
        if rule.subjects is not None and not rule.subjects.dynamic_matches(ctx):
            continue  # the rule is not about this caller
        failures = count_failures(rule, ctx)
        if best is None or failures < best_failures:
            best, best_failures = rule, failures
    closest = check_allow(best, ctx, exhaustive=True) if best is not None else None
    who = f"{ctx.caller.namespace}/{ctx.caller.service_account}"
    if closest is None:
        applied = ", ".join(e.policy.name for e in entries) or "none"
        return Decision(
            verdict=Verdict.DENY,
            outcome=Outcome.PERMISSION_DENIED,
            reason="NO_MATCHING_RULE",
            message=f"no Allow rule applies to {who} (applicable policies: {applied})",
            policy_set_revision=policy_set.revision,
            details={"subReason": "NO_APPLICABLE_RULE"},
        )
    first = closest.failures[0]
    name = closest.rule.qualified_name
    return Decision(
        verdict=Verdict.DENY,
        outcome=Outcome.PERMISSION_DENIED,
        reason="NO_MATCHING_RULE",
        message=f"closest rule {name}: {first.sentence}",
        policy_set_revision=policy_set.revision,
        details={
            "subReason": first.code,
            "closest": name,
            "matched": name,
            "closestFailures": [c.as_dict() for c in closest.failures],
        },
    )


def _unsure_message(rule: Rule, ctx: EvaluationContext) -> str:
    error = ctx.unsure_rules[id(rule)]
    return f"a when condition of {rule.qualified_name} did not evaluate ({error}); deny when unsure"


# Step 5's working records below are private and never changed after they are built; they are not frozen because
# a frozen dataclass pays a setattr call per field, twice or more per decision.
@dataclass(slots=True)
class _LimitState:
    """The limits of some entries intersected with the settings ceiling: the duration range they leave, the ones
    that bound durations (ceiling first) and every limit applied, in entry order."""

    low: int
    high: int
    bounds: tuple[Limits, ...]
    applied: tuple[str, ...]


@dataclass(slots=True)
class _Bounded:
    """Step 5's result for a grant: the duration within every limit, and what bound it."""

    duration: int
    low: int
    flags: tuple[str, ...]
    bound_by: tuple[str, ...]
    applied: tuple[str, ...]
    state: _LimitState  # what the duration was bounded by: the Audit shadow adds one policy's limits to it


def _limit_state(
    policy_set: PolicySet, key: str, entries: tuple[Applicable, ...], start: _LimitState | None = None
) -> _LimitState | Decision:
    """Fold the limits of ``entries`` into ``start`` (the settings ceiling when None); a refused key ends it."""
    if start is None:
        ceiling = policy_set.settings_limits
        bounds: list[Limits] = [ceiling]
        applied: list[str] = []
        low, high = ceiling.duration_min or 0, ceiling.duration_max or 0
    else:
        bounds, applied, low, high = list(start.bounds), list(start.applied), start.low, start.high
    for entry in entries:
        limit = entry.policy.limits
        if limit is None:
            continue
        applied.append(limit.qualified_name)
        if limit.key is not None and (refusal := limit.key.refusal(key)) is not None:
            return _refuse("KEY_NOT_ALLOWED", f"{refusal} ({limit.qualified_name})", limit.qualified_name, policy_set)
        if limit.duration_min is not None or limit.duration_max is not None:
            bounds.append(limit)
            if limit.duration_min is not None and limit.duration_min > low:
                low = limit.duration_min
            if limit.duration_max is not None and limit.duration_max < high:
                high = limit.duration_max
    return _LimitState(low, high, tuple(bounds), tuple(applied))


def _bounded(
    policy_set: PolicySet,
    ctx: EvaluationContext,
    entries: tuple[Applicable, ...],
    grant: RuleResult,
    start: _LimitState | None = None,
) -> _Bounded | Decision:
    """Step 5: intersect the applicable limits with the settings ceiling and apply them to the granted duration.
    ``start``: the state of limits already folded in (``entries`` then holds only the ones to add)."""
    state = _limit_state(policy_set, ctx.request.key, entries, start)
    if isinstance(state, Decision):
        return state
    low, high, bounds = state.low, state.high, state.bounds
    duration = grant.duration
    assert duration is not None
    if low > high:
        message = f"the limits leave no duration: min {format_duration(low)} > max {format_duration(high)}"
        return _refuse("DURATION_RANGE_EMPTY", message, None, policy_set)
    flags = grant.flags
    bound_by: tuple[str, ...] = ()
    if duration > high:
        binding = [b for b in bounds if b.duration_max == high]
        denier = next((b for b in binding if b.on_exceed == "Deny"), None)
        if denier is not None and not grant.defaulted:
            name = denier.qualified_name
            message = f"{format_duration(duration)} > max {format_duration(high)} ({name}, onExceed: Deny)"
            return _refuse("DURATION_TOO_LONG", message, name, policy_set)
        duration, flags = high, (*flags, "DURATION_CLAMPED")
        bound_by = tuple(b.qualified_name for b in binding)
    elif duration < low:
        binding = [b for b in bounds if b.duration_min == low]
        denier = next((b for b in binding if b.on_below == "Deny"), None)
        if denier is not None and not grant.defaulted:
            name = denier.qualified_name
            message = f"{format_duration(duration)} below min {format_duration(low)} ({name}, onBelow: Deny)"
            return _refuse("DURATION_TOO_SHORT", message, name, policy_set)
        duration, flags = low, (*flags, "DURATION_RAISED")
        bound_by = tuple(b.qualified_name for b in binding)
    return _Bounded(duration, low, flags, bound_by, state.applied, state)


def _limit_and_issue(
    policy_set: PolicySet,
    ctx: EvaluationContext,
    entries: tuple[Applicable, ...],
    grant: RuleResult,
    bounded: _Bounded | Decision | None = None,
) -> Decision:
    """Steps 5 and 6: the limits, then the cap at the CA's notAfter; the ALLOW decision when both pass.
    ``bounded`` is step 5's result when the caller already computed it for these entries and this grant."""
    if bounded is None:
        bounded = _bounded(policy_set, ctx, entries, grant)
    if isinstance(bounded, Decision):
        return bounded
    granted_by = grant.rule.qualified_name
    duration, flags = bounded.duration, bounded.flags
    assert grant.rule.duration is not None
    not_after = ctx.now + timedelta(seconds=duration)
    ca_not_after = ctx.ca_not_after
    if ca_not_after is not None and not_after > ca_not_after:
        capped = cap_to_ca(
            ctx.now,
            ca_not_after,
            duration,
            minimum=max(bounded.low, grant.rule.duration.minimum),
            on_exceed=policy_set.settings.ca_on_exceed,
            revision=policy_set.revision,
        )
        if isinstance(capped, Decision):
            return capped
        duration = capped
        not_after = ctx.now + timedelta(seconds=capped)
        flags = (*flags, "NOT_AFTER_CAPPED_BY_CA")
    details: dict[str, object] = {"matched": granted_by}
    if bounded.bound_by:
        details["boundBy"] = list(bounded.bound_by)
    return Decision(
        verdict=Verdict.ALLOW,
        outcome=Outcome.OK,
        reason=GRANTED,
        message=grant.rule.granted_message,
        uris=ctx.uri_texts,
        dns_names=ctx.request.dns_names,
        duration_seconds=duration,
        not_after=not_after,
        granted_by=granted_by,
        flags=tuple(dict.fromkeys(flags)) if len(flags) > 1 else flags,
        limits_applied=bounded.applied,
        policy_set_revision=policy_set.revision,
        details=details,
    )


def _refuse(reason: str, message: str, matched: str | None, policy_set: PolicySet) -> Decision:
    details: dict[str, object] = {"matched": matched} if matched else {}
    return Decision(
        verdict=Verdict.DENY,
        outcome=Outcome.PERMISSION_DENIED,
        reason=reason,
        message=message,
        policy_set_revision=policy_set.revision,
        details=details,
    )


def _audit(
    policy_set: PolicySet,
    ctx: EvaluationContext,
    enforced: tuple[Applicable, ...],
    entry: Applicable,
    decision: Decision,
    grant: RuleResult | None,
    bounded: _Bounded | None,
) -> list[AuditFinding]:
    """Step 8 for one Audit-mode policy: what would change if it were enforced alongside the others.

    ``grant`` is the enforced decision's granting rule result (None when nothing granted), ``bounded`` its step 5
    result over the enforced entries.
    """
    policy = entry.policy
    if not entry.allow_rules and not entry.deny_rules:
        # Only limits: they cannot turn a Deny into an Allow, and for an Allow the grant is unchanged.
        if not decision.allowed or policy.limits is None:
            return []
        assert grant is not None and bounded is not None and decision.duration_seconds is not None
        # The entries stay unsorted: their order only decides which limit a report names first, and here no
        # enforced limit can be named by a refusal (the enforced decision, with the same grant and key, passed
        # all of them), while _rule_of only looks for this policy's own limits.
        shadow_entries = (*enforced, entry)
        # The enforced limits were folded once already: only this policy's are added to them.
        shadowed = _bounded(policy_set, ctx, (entry,), grant, bounded.state)
        capped = "NOT_AFTER_CAPPED_BY_CA" in decision.flags
        if isinstance(shadowed, Decision):
            shadow = shadowed
        elif shadowed.duration == decision.duration_seconds and not capped:
            return []  # the audit limits do not bind: the common case, answered without a second decision
        elif shadowed.duration < decision.duration_seconds and not capped:
            # A shorter grant than one the CA did not cap: step 6 cannot cap it either, so the shadow decision
            # would be this grant with the shorter duration. The finding is named from what it would carry.
            granted_by = grant.rule.qualified_name
            rule = _rule_named(policy, (granted_by, granted_by, *shadowed.bound_by))
            return [_duration_finding(policy, rule, shadowed.duration, decision.duration_seconds)]
        else:
            shadow = _limit_and_issue(policy_set, ctx, shadow_entries, grant, shadowed)
    else:
        shadow_entries = tuple(sorted((*enforced, entry), key=lambda e: e.policy.order))
        try:
            shadow = decide_over(policy_set, ctx, shadow_entries)
        except LabelsUnavailable as exc:
            return [AuditFinding(policy.name, None, "AUDIT_EVALUATION_ERROR", str(exc))]
    return shadow_findings(policy, decision, shadow)


def shadow_findings(policy: Policy, decision: Decision, shadow: Decision) -> list[AuditFinding]:
    """What ``policy`` would change: the enforced ``decision`` against the ``shadow`` decision with it enforced."""
    rule = _rule_of(policy, shadow)
    if decision.allowed and not shadow.allowed:
        text = f"would deny: {shadow.reason}: {shadow.message}"
        return [AuditFinding(policy.name, rule, "AUDIT_WOULD_DENY", text)]
    if not decision.allowed and shadow.allowed:
        return [AuditFinding(policy.name, rule, "AUDIT_WOULD_ALLOW", f"would allow: {shadow.message}")]
    if decision.allowed and shadow.allowed and shadow.duration_seconds != decision.duration_seconds:
        assert shadow.duration_seconds is not None and decision.duration_seconds is not None
        return [_duration_finding(policy, rule, shadow.duration_seconds, decision.duration_seconds)]
    return []


def _duration_finding(policy: Policy, rule: str | None, shadow_seconds: int, enforced_seconds: int) -> AuditFinding:
    """Both decisions allow, for different durations."""
    finding = "AUDIT_WOULD_CLAMP" if shadow_seconds < enforced_seconds else "AUDIT_WOULD_EXTEND"
    text = (
        f"would issue {shadow_seconds}s ({format_duration(shadow_seconds)}) instead of "
        f"{enforced_seconds}s ({format_duration(enforced_seconds)})"
    )
    return AuditFinding(policy.name, rule, finding, text)


def _rule_of(policy: Policy, shadow: Decision) -> str | None:
    """The part of ``policy`` that produced the shadow decision: a rule name or ``limits``."""
    candidates = [*shadow.deny_rules, shadow.granted_by or "", str(shadow.details.get("matched", ""))]
    bound_by = shadow.details.get("boundBy")
    if isinstance(bound_by, list):
        candidates += [str(name) for name in bound_by]
    return _rule_named(policy, candidates)


def _rule_named(policy: Policy, candidates: Iterable[str]) -> str | None:
    """The first of the qualified ``candidates`` that belongs to ``policy``, as a rule name; else ``limits``
    when the policy has only limits."""
    prefix = policy.name + "/"
    for name in candidates:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return "limits" if policy.limits is not None and not policy.rules else None
