"""The conditions of one rule (policy-format.md §3 steps 2 and 3), as ``Check`` records.

An Allow rule grants when every requested attribute is within it; a Deny rule matches when all of its conditions
hold. In the fast path the checks stop at the first failure; ``exhaustive`` evaluates every condition, which
explain and the "closest rule" hint of step 7 need.
"""

from __future__ import annotations

from dataclasses import dataclass

from clocks.durations import format_duration
from policies.compiled import Rule
from policies.context import Check, EvaluationContext


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: Rule
    checks: tuple[Check, ...]  # the failures, or every check when exhaustive
    duration: int | None = None  # for a granting Allow rule: the duration it grants
    flags: tuple[str, ...] = ()
    defaulted: bool = False
    ok: bool = False  # the Allow rule grants / the Deny rule matches

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.held)


# The fast path only needs to know that a rule failed; explanations are built in exhaustive mode.
FAILED = Check("(fast path)", False, "", "")
CONDITION_ERROR = "CONDITION_ERROR"  # a ``when`` condition did not evaluate to a boolean: deny when unsure


def condition_results(rule: Rule, ctx: EvaluationContext) -> tuple[bool | str, ...]:
    """Each ``when`` condition's result for this request: True, False, or the error text (memoised)."""
    results = ctx.condition_results.get(id(rule))
    if results is None:
        values = ctx.condition_values(rule.condition_variables)
        if isinstance(values, str):
            results = tuple(values for _ in rule.conditions)
        else:
            results = tuple(c.evaluate(values) for c in rule.conditions)
        ctx.condition_results[id(rule)] = results
    return results


def conditions_hold(rule: Rule, ctx: EvaluationContext) -> bool | str:
    """All ``when`` conditions together: False if any is false (certain), else the first error, else True."""
    if not rule.conditions:
        return True
    results = condition_results(rule, ctx)
    if False in results:
        return False
    return next((r for r in results if isinstance(r, str)), True)


def _condition_checks(rule: Rule, ctx: EvaluationContext) -> list[Check]:
    checks = []
    for index, (condition, result) in enumerate(zip(rule.conditions, condition_results(rule, ctx), strict=True)):
        held = result is True
        actual = "true" if result is True else "false" if result is False else f"error: {result}"
        code = None if held else "CONDITION_FALSE" if result is False else CONDITION_ERROR
        note = None if held else f"when[{index}] {condition.text!r} is {actual}"
        checks.append(Check(f"when[{index}]", held, condition.text, actual, code, note))
    return checks


def _identities(rule: Rule, ctx: EvaluationContext, results: list[Check], exhaustive: bool) -> bool:
    primary = ctx.primary_trust_domain
    lookup = ctx.lookup
    for index, uri in enumerate(ctx.uris):
        held = False
        if uri.trust_domain in rule.trust_domains:
            for template in rule.identities:  # any(), without a generator per URI
                if template.matches(uri, primary, lookup):
                    held = True
                    break
        if held and not exhaustive:
            continue
        if not exhaustive:
            results.append(FAILED)
            return False
        expected = "one of [" + ", ".join(t.describe(ctx.lookup, primary) for t in rule.identities) + "]"
        note = None
        if not held and uri.trust_domain not in rule.trust_domains:
            allowed = ", ".join(sorted(rule.trust_domains))
            kind = "an alias" if uri.trust_domain != primary else "the primary trust domain"
            note = f"uris[{index}] trust domain {uri.trust_domain} is {kind} the rule does not opt into ([{allowed}])"
        elif not held:
            note = f"uris[{index}] {uri} does not match {expected}"
        results.append(
            Check(f"uris[{index}]", held, expected, str(uri), None if held else "IDENTITY_NOT_ALLOWED", note)
        )
    return True


def _dns_names(rule: Rule, ctx: EvaluationContext, results: list[Check], exhaustive: bool) -> bool:
    for index, labels in enumerate(ctx.dns_labels):
        name = ctx.request.dns_names[index]
        held = labels is not None and any(
            t.matches(labels, ctx.lookup, allow_wildcard=rule.allow_wildcard_dns_names) for t in rule.dns_names
        )
        if held and not exhaustive:
            continue
        if not exhaustive:
            results.append(FAILED)
            return False
        if rule.dns_names:
            expected = "one of [" + ", ".join(f'"{t.describe(ctx.lookup)}"' for t in rule.dns_names) + "]"
        else:
            expected = "no DNS names"
        note = None
        if not held:
            if labels is None:
                note = f'dnsNames[{index}] "{name}" is not a valid lowercase DNS name'
            elif "*" in name and not rule.allow_wildcard_dns_names:
                note = f'dnsNames[{index}] "{name}" is a wildcard name and the rule does not set allowWildcardDNSNames'
            else:
                note = f'dnsNames[{index}] "{name}" not allowed; the rule allows {expected}'
        results.append(
            Check(f"dnsNames[{index}]", held, expected, name, None if held else "DNS_NAME_NOT_ALLOWED", note)
        )
    return True


def _duration(
    rule: Rule, ctx: EvaluationContext, results: list[Check], exhaustive: bool
) -> tuple[int, tuple[str, ...], bool] | None:
    span = rule.duration
    assert span is not None  # Allow rules always have a resolved range
    requested = ctx.request.validity_seconds
    flags: tuple[str, ...]
    if requested <= 0:  # nonPositive: UseDefault (Deny was answered before any rule)
        granted, flags, defaulted = min(max(span.default, span.minimum), span.maximum), ("DURATION_DEFAULTED",), True
    elif requested < span.minimum:
        if span.on_below != "Raise":
            _refuse_duration(
                rule, requested, results, exhaustive, "DURATION_TOO_SHORT", "below min {} (onBelow: Deny)", span.minimum
            )
            return None
        granted, flags, defaulted = span.minimum, ("DURATION_RAISED",), False
    elif requested > span.maximum:
        if span.on_exceed != "Clamp":
            _refuse_duration(
                rule, requested, results, exhaustive, "DURATION_TOO_LONG", "> max {} (onExceed: Deny)", span.maximum
            )
            return None
        granted, flags, defaulted = span.maximum, ("DURATION_CLAMPED",), False
    else:
        granted, flags, defaulted = requested, (), False
    if exhaustive:
        actual = f"{requested}s" if requested <= 0 else format_duration(requested)
        if granted != requested:
            actual += f" -> {format_duration(granted)} ({', '.join(flags)})"  # the one flag that moved it
        results.append(Check("duration", True, _range(rule), actual))
    return granted, flags, defaulted


def _refuse_duration(
    rule: Rule, requested: int, results: list[Check], exhaustive: bool, code: str, why: str, bound: int
) -> None:
    """Record a requested duration outside the range that onBelow/onExceed refuses; ``why`` formats ``bound``."""
    if not exhaustive:
        results.append(FAILED)
        return
    shown = format_duration(requested)
    note = f"requested {shown} {why.format(format_duration(bound))}"
    results.append(Check("duration", False, _range(rule), shown, code, note))


def _range(rule: Rule) -> str:
    assert rule.duration is not None
    return f"{format_duration(rule.duration.minimum)} to {format_duration(rule.duration.maximum)}"


def check_allow(
    rule: Rule, ctx: EvaluationContext, *, exhaustive: bool = False, static_subjects_checked: bool = False
) -> RuleResult:
    """Whether ``rule`` grants the request, and with which duration. Rule subjects are checked first
    (only their label selector when ``static_subjects_checked``: the set's cache already matched the names).

    Raises LabelsUnavailable when a selector or template needs namespace labels that are not synced.
    """
    results: list[Check] = []
    if rule.subjects is not None:
        if not exhaustive:
            subjects = rule.subjects
            if not (subjects.dynamic_matches(ctx) if static_subjects_checked else subjects.matches(ctx)):
                return RuleResult(rule, (FAILED,))
        else:
            results.extend(rule.subjects.check(ctx, "rule.", exhaustive=True))
    # In exhaustive mode these never stop early, so every condition is recorded.
    if not _identities(rule, ctx, results, exhaustive) or not _dns_names(rule, ctx, results, exhaustive):
        return RuleResult(rule, tuple(results))
    key = ctx.request.key
    assert rule.key is not None
    refusal = rule.key.refusal(key)
    if refusal is not None and not exhaustive:
        return RuleResult(rule, (FAILED,))
    if exhaustive:
        results.append(Check("key", refusal is None, rule.key.describe(), key, "KEY_NOT_ALLOWED", refusal))
    usages = ctx.request.usages
    extra = sorted(set(usages) - rule.usages) if usages else []
    if extra and not exhaustive:
        return RuleResult(rule, (FAILED,))
    if exhaustive:
        note = f"usage {extra[0]} is not in the rule's usages" if extra else None
        expected = "a subset of [" + ", ".join(sorted(rule.usages)) + "]"
        actual = "[" + ", ".join(usages) + "]"
        results.append(Check("usages", not extra, expected, actual, "USAGE_NOT_ALLOWED", note))
    if rule.expires_at is not None:
        live = ctx.now < rule.expires_at
        if not live and not exhaustive:
            return RuleResult(rule, (FAILED,))
        if exhaustive:
            ticket = f" (ticket {rule.ticket})" if rule.ticket else ""
            note = f"the rule expired at {rule.expires_at.isoformat()}{ticket}"
            expected = f"before {rule.expires_at.isoformat()}"
            results.append(Check("expiresAt", live, expected, ctx.now.isoformat(), "RULE_EXPIRED", note))
    granted = _duration(rule, ctx, results, exhaustive)
    if rule.conditions:  # last: the most expensive check, and an error only matters when all else held
        if exhaustive:
            results.extend(_condition_checks(rule, ctx))
        elif granted is not None:
            held = conditions_hold(rule, ctx)
            if held is not True:
                if held is not False:
                    ctx.unsure_rules[id(rule)] = held
                return RuleResult(rule, (FAILED,))
    if granted is None or (exhaustive and not all(c.held for c in results)):
        return RuleResult(rule, tuple(results))
    duration, flags, defaulted = granted
    return RuleResult(rule, tuple(results), duration, flags, defaulted, ok=True)


def count_failures(rule: Rule, ctx: EvaluationContext) -> int:
    """How many conditions of Allow ``rule`` fail: ``len(check_allow(..., exhaustive=True).failures)`` for a rule
    whose subjects match, computed without building explanations (step 7 ranks every rule by it)."""
    primary = ctx.primary_trust_domain
    failed = sum(
        1
        for uri in ctx.uris
        if uri.trust_domain not in rule.trust_domains
        or not any(t.matches(uri, primary, ctx.lookup) for t in rule.identities)
    )
    allow_wildcard = rule.allow_wildcard_dns_names
    failed += sum(
        1
        for labels in ctx.dns_labels
        if labels is None
        or not any(t.matches(labels, ctx.lookup, allow_wildcard=allow_wildcard) for t in rule.dns_names)
    )
    assert rule.key is not None
    failed += rule.key.refusal(ctx.request.key) is not None
    failed += bool(set(ctx.request.usages) - rule.usages)
    failed += rule.expires_at is not None and ctx.now >= rule.expires_at
    failed += _duration(rule, ctx, [], False) is None
    if rule.conditions:
        failed += sum(r is not True for r in condition_results(rule, ctx))
    return failed


def _deny_identity_hit(rule: Rule, ctx: EvaluationContext) -> str | None:
    """The first requested URI one of Deny ``rule``'s identities covers (an unrenderable template covers all)."""
    primary = ctx.primary_trust_domain
    for uri in ctx.uris:
        if any(t.matches(uri, primary, ctx.lookup, for_deny=True) for t in rule.identities):
            return str(uri)
    return None


def _deny_dns_hit(rule: Rule, ctx: EvaluationContext) -> str | None:
    """The first requested DNS name one of Deny ``rule``'s templates covers (an unrenderable template covers
    every valid name; a requested wildcard label covers any pattern label)."""
    for index, labels in enumerate(ctx.dns_labels):
        if labels is not None and any(
            t.matches(labels, ctx.lookup, allow_wildcard=True, for_deny=True) for t in rule.dns_names
        ):
            return ctx.request.dns_names[index]
    return None


def denies(rule: Rule, ctx: EvaluationContext, *, static_subjects_checked: bool = False) -> bool:
    """The fast path of ``check_deny``: whether Deny ``rule`` matches, without building explanations."""
    if rule.subjects is not None and not (
        rule.subjects.dynamic_matches(ctx) if static_subjects_checked else rule.subjects.matches(ctx)
    ):
        return False
    if rule.expires_at is not None and ctx.now >= rule.expires_at:
        return False
    if rule.identities and _deny_identity_hit(rule, ctx) is None:
        return False
    if rule.dns_names and _deny_dns_hit(rule, ctx) is None:
        return False
    if rule.key is not None and rule.key.algorithms is not None and ctx.request.key not in rule.key.algorithms:
        return False
    held = conditions_hold(rule, ctx)
    if held is False:
        return False
    if held is not True:
        ctx.unsure_rules[id(rule)] = held  # the rule may apply: it denies (deny when unsure)
    return True


def check_deny(rule: Rule, ctx: EvaluationContext) -> RuleResult:
    """Every condition of Deny ``rule`` for explain; ``ok`` when all hold (the rule matches)."""
    results: list[Check] = []
    if rule.subjects is not None:
        results.extend(rule.subjects.check(ctx, "rule.", exhaustive=True))
    if rule.expires_at is not None:
        live = ctx.now < rule.expires_at
        results.append(Check("expiresAt", live, f"before {rule.expires_at.isoformat()}", ctx.now.isoformat()))
    primary = ctx.primary_trust_domain
    if rule.identities:
        hit = _deny_identity_hit(rule, ctx)
        expected = "any of [" + ", ".join(t.describe(ctx.lookup, primary) for t in rule.identities) + "]"
        actual = hit or ", ".join(str(u) for u in ctx.uris)
        unrendered = [t.text for t in rule.identities if t.render(ctx.lookup) is None]
        if unrendered:
            actual += f" ({', '.join(unrendered)} cannot render for this caller: a Deny rule then matches)"
        results.append(Check("identities", hit is not None, expected, actual))
    if rule.dns_names:
        hit = _deny_dns_hit(rule, ctx)
        expected = "any of [" + ", ".join(t.describe(ctx.lookup) for t in rule.dns_names) + "]"
        results.append(Check("dnsNames", hit is not None, expected, hit or ", ".join(ctx.request.dns_names)))
    if rule.key is not None and rule.key.algorithms is not None:
        results.append(Check("key", ctx.request.key in rule.key.algorithms, rule.key.describe(), ctx.request.key))
    conditions = _condition_checks(rule, ctx) if rule.conditions else []
    results.extend(conditions)
    # An error in a condition counts as a match (deny when unsure), a false one does not.
    return RuleResult(rule, tuple(results), ok=all(c.held or c.code == CONDITION_ERROR for c in results))
