"""The ``expect`` block of a PolicyTest case, checked against a decision field by field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.decider import Decision, matched_rule


def expectation_mismatches(expect: dict[str, Any], decision: Decision) -> list[str]:
    """Every way ``decision`` differs from ``expect``; empty when it meets every expectation."""
    problems: list[str] = []
    codes = {decision.reason, *decision.flags}
    sub = decision.details.get("subReason")
    if sub:
        codes.add(str(sub))

    def differs(key: str, actual: object) -> None:
        if key in expect and expect[key] != actual:
            problems.append(f"{key}: expected {expect[key]!r}, got {actual!r}")

    def differs_list(key: str, actual: Sequence[str], *, ordered: bool = True) -> None:
        if key not in expect:
            return
        if (list(expect[key]) == list(actual)) if ordered else (sorted(expect[key]) == sorted(actual)):
            return
        problems.append(f"{key}: expected {expect[key]}, got {list(actual)}")

    wanted = expect["decision"].capitalize()
    if wanted != decision.verdict.value:
        problems.append(f"decision: expected {wanted}, got {decision.verdict.value} ({decision.reason})")
    if "reason" in expect and expect["reason"] not in codes:
        problems.append(f"reason: expected {expect['reason']}, got {', '.join(sorted(codes))}")
    for code in expect.get("reasons", ()):
        if code not in codes:
            problems.append(f"reasons: {code} missing from {', '.join(sorted(codes))}")
    differs("subReason", sub)
    differs("outcome", decision.outcome.value)
    if (
        "matched" in expect
        and expect["matched"] != matched_rule(decision)
        and expect["matched"] not in decision.deny_rules
    ):
        problems.append(f"matched: expected {expect['matched']}, got {matched_rule(decision)}")
    differs_list("denyRules", decision.deny_rules)
    differs("durationSeconds", decision.duration_seconds)
    differs("notAfter", decision.not_after)
    differs_list("flags", decision.flags, ordered=False)
    differs_list("uris", decision.uris)
    differs_list("dnsNames", decision.dns_names)
    if "auditFindings" in expect:
        problems.extend(_compare_findings(expect["auditFindings"], decision))
    if "message" in expect and expect["message"] not in decision.message:
        problems.append(f"message: {expect['message']!r} not in {decision.message!r}")
    return problems


def _compare_findings(wanted: list[str], decision: Decision) -> list[str]:
    """Entries are ``CODE``, ``policy:CODE`` or ``policy/rule:CODE``; an empty list expects no findings."""
    present = set()
    for finding in decision.audit_findings:
        present.add(finding.finding)
        present.add(f"{finding.policy}:{finding.finding}")
        if finding.rule:
            present.add(f"{finding.policy}/{finding.rule}:{finding.finding}")
            present.add(f"/{finding.rule}:{finding.finding}")
    shown = [f"{f.policy}/{f.rule or '-'}:{f.finding}" for f in decision.audit_findings]
    if not wanted and decision.audit_findings:
        return [f"auditFindings: expected none, got {shown}"]
    return [f"auditFindings: {entry} missing from {shown}" for entry in wanted if entry not in present]
