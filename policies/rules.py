"""The conditions of one rule (policy-format.md §3 steps 2 and 3), as ``Check`` records.

An Allow rule grants when every requested attribute is within it; a Deny rule matches when all of its conditions
hold. In the fast path the checks stop at the first failure; ``exhaustive`` evaluates every condition, which
explain and the "closest rule" hint of step 7 need.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.context import Check, EvaluationContext
from policies.documents import Rule
from policies.durations import format_duration


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: Rule
    checks: tuple[Check, ...]  # the failures, or every check when exhaustive
    duration: int | None = None  # for a granting Allow rule: the duration it grants
    flags: tuple[str, ...] = ()
    defaulted: bool = False

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.held)

    @property
    def ok(self) -> bool:
        return all(c.held for c in self.checks)


def _identities(rule: Rule, ctx: EvaluationContext, results: list[Check], exhaustive: bool) -> bool:
    primary = ctx.primary_trust_domain
    for index, uri in enumerate(ctx.uris):
        held = uri.trust_domain in rule.trust_domains and any(
            t.matches(uri, primary, ctx.lookup) for t in rule.identities
        )
        if held and not exhaustive:
            continue
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
        if not held and not exhaustive:
            return False
    return True


def _dns_names(rule: Rule, ctx: EvaluationContext, results: list[Check], exhaustive: bool) -> bool:
    for index, labels in enumerate(ctx.dns_labels):
        name = ctx.request.dns_names[index]
        held = labels is not None and any(
            t.matches(labels, ctx.lookup, allow_wildcard=rule.allow_wildcard_dns_names) for t in rule.dns_names
        )
        if held and not exhaustive:
            continue
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
        if not held and not exhaustive:
            return False
    return True


def _duration(rule: Rule, ctx: EvaluationContext, results: list[Check]) -> tuple[int, tuple[str, ...], bool] | None:
    span = rule.duration
    assert span is not None  # Allow rules always have a resolved range
    requested = ctx.request.validity_seconds
    expected = f"{format_duration(span.minimum)} to {format_duration(span.maximum)}"
    if requested <= 0:  # nonPositive: UseDefault (Deny was answered before any rule)
        granted = min(max(span.default, span.minimum), span.maximum)
        results.append(Check("duration", True, expected, f"{requested}s -> default {format_duration(granted)}"))
        return granted, ("DURATION_DEFAULTED",), True
    shown = format_duration(requested)
    if requested < span.minimum:
        if span.on_below == "Raise":
            results.append(Check("duration", True, expected, f"{shown} raised to {format_duration(span.minimum)}"))
            return span.minimum, ("DURATION_RAISED",), False
        note = f"requested {shown} below min {format_duration(span.minimum)} (onBelow: Deny)"
        results.append(Check("duration", False, expected, shown, "DURATION_TOO_SHORT", note))
        return None
    if requested > span.maximum:
        if span.on_exceed == "Clamp":
            results.append(Check("duration", True, expected, f"{shown} clamped to {format_duration(span.maximum)}"))
            return span.maximum, ("DURATION_CLAMPED",), False
        note = f"requested {shown} > max {format_duration(span.maximum)} (onExceed: Deny)"
        results.append(Check("duration", False, expected, shown, "DURATION_TOO_LONG", note))
        return None
    results.append(Check("duration", True, expected, shown))
    return requested, (), False


def check_allow(rule: Rule, ctx: EvaluationContext, *, exhaustive: bool = False) -> RuleResult:
    """Whether ``rule`` grants the request, and with which duration. Rule subjects are checked first.

    Raises LabelsUnavailable when a selector or template needs namespace labels that are not synced.
    """
    results: list[Check] = []
    if rule.subjects is not None:
        results.extend(rule.subjects.check(ctx, "rule.", exhaustive=exhaustive))
        if results and not exhaustive and not results[-1].held:
            return RuleResult(rule, tuple(results))
    # In exhaustive mode these never stop early, so every condition is recorded.
    if not _identities(rule, ctx, results, exhaustive) or not _dns_names(rule, ctx, results, exhaustive):
        return RuleResult(rule, tuple(results))
    key = ctx.request.key
    assert rule.key is not None
    refusal = rule.key.refusal(key)
    if refusal is not None or exhaustive:
        results.append(Check("key", refusal is None, rule.key.describe(), key, "KEY_NOT_ALLOWED", refusal))
        if refusal is not None and not exhaustive:
            return RuleResult(rule, tuple(results))
    extra = sorted(set(ctx.request.usages) - rule.usages)
    if extra or exhaustive:
        note = f"usage {extra[0]} is not in the rule's usages" if extra else None
        expected = "a subset of [" + ", ".join(sorted(rule.usages)) + "]"
        actual = "[" + ", ".join(ctx.request.usages) + "]"
        results.append(Check("usages", not extra, expected, actual, "USAGE_NOT_ALLOWED", note))
        if extra and not exhaustive:
            return RuleResult(rule, tuple(results))
    if rule.expires_at is not None:
        live = ctx.now < rule.expires_at
        if not live or exhaustive:
            ticket = f" (ticket {rule.ticket})" if rule.ticket else ""
            note = f"the rule expired at {rule.expires_at.isoformat()}{ticket}"
            results.append(
                Check(
                    "expiresAt",
                    live,
                    f"before {rule.expires_at.isoformat()}",
                    ctx.now.isoformat(),
                    "RULE_EXPIRED",
                    note,
                )
            )
            if not live and not exhaustive:
                return RuleResult(rule, tuple(results))
    granted = _duration(rule, ctx, results)
    if granted is None or not all(c.held for c in results):
        return RuleResult(rule, tuple(results))
    duration, flags, defaulted = granted
    return RuleResult(rule, tuple(results), duration, flags, defaulted)


def check_deny(rule: Rule, ctx: EvaluationContext, *, exhaustive: bool = False) -> RuleResult:
    """Whether Deny ``rule`` matches: all of its conditions hold (``ok``)."""
    results: list[Check] = []
    if rule.subjects is not None:
        results.extend(rule.subjects.check(ctx, "rule.", exhaustive=exhaustive))
        if results and not exhaustive and not results[-1].held:
            return RuleResult(rule, tuple(results))
    if rule.expires_at is not None:
        live = ctx.now < rule.expires_at
        results.append(Check("expiresAt", live, f"before {rule.expires_at.isoformat()}", ctx.now.isoformat()))
        if not live and not exhaustive:
            return RuleResult(rule, tuple(results))
    primary = ctx.primary_trust_domain
    if rule.identities:
        hit = next((str(u) for u in ctx.uris if any(t.matches(u, primary, ctx.lookup) for t in rule.identities)), None)
        expected = "any of [" + ", ".join(t.describe(ctx.lookup, primary) for t in rule.identities) + "]"
        actual = hit or ", ".join(str(u) for u in ctx.uris)
        results.append(Check("identities", hit is not None, expected, actual))
        if hit is None and not exhaustive:
            return RuleResult(rule, tuple(results))
    if rule.dns_names:
        hit = next(
            (
                ctx.request.dns_names[i]
                for i, labels in enumerate(ctx.dns_labels)
                if labels is not None
                and any(t.matches(labels, ctx.lookup, allow_wildcard=True, for_deny=True) for t in rule.dns_names)
            ),
            None,
        )
        expected = "any of [" + ", ".join(t.describe(ctx.lookup) for t in rule.dns_names) + "]"
        results.append(Check("dnsNames", hit is not None, expected, hit or ", ".join(ctx.request.dns_names)))
        if hit is None and not exhaustive:
            return RuleResult(rule, tuple(results))
    if rule.key is not None and rule.key.algorithms is not None:
        hit_key = ctx.request.key in rule.key.algorithms
        results.append(Check("key", hit_key, rule.key.describe(), ctx.request.key))
    return RuleResult(rule, tuple(results))
