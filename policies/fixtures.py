"""Runs ``kind: PolicyTest`` documents: the offline fixtures of ``meshsigner policy test``.

Each document names its policies by globs relative to the test file, a clock, the CA's notAfter and cases of
(caller, request, expect). Expectations are checked field by field; a failing case carries the full explain
text so CI logs say why. A set that does not load makes every case see POLICY_SET_UNAVAILABLE (exactly what the
server would answer), unless the document lists ``expectLoadErrors``, in which case the load must fail with them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies.evaluator import evaluate, matched_rule
from policies.explain import explain, render_text
from policies.kinds import read_document
from policies.loader import load_policy_set, policy_files
from policies.model import Caller, Decision, IssuanceRequest, Outcome
from policies.policy_set import PolicySet
from policies.precheck import deny
from policies.problems import PolicySetInvalid
from policies.schema import Reporter
from policies.spiffe import workload_spiffe_id
from policies.yaml_source import parse_documents

DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    test: str
    case: str
    mismatches: tuple[str, ...]
    explanation: str = ""
    matched: str | None = None

    @property
    def passed(self) -> bool:
        return not self.mismatches

    @property
    def title(self) -> str:
        return f"{self.file}: {self.test} / {self.case}"


@dataclass
class TestRun:
    results: list[CaseResult] = field(default_factory=list)
    rules: set[str] = field(default_factory=set)  # every rule of the sets under test
    exercised: set[str] = field(default_factory=set)  # rules that decided at least one case

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


def run_test_files(paths: Iterable[str | Path]) -> TestRun:
    run = TestRun()
    for path in paths:
        _run_file(Path(path), run)
    return run


def _run_file(path: Path, run: TestRun) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        run.results.append(CaseResult(str(path), "-", "read", (f"cannot read: {exc}",)))
        return
    documents, problems = parse_documents(text, str(path))
    if problems:
        run.results.append(CaseResult(str(path), "-", "parse", tuple(str(p) for p in problems)))
    for document in documents:
        report = Reporter(str(path))
        result = read_document(document.node, report)
        if result is None or result[0] != "PolicyTest":
            found = result[0] if result is not None else "an invalid document"
            messages = [str(p) for p in report.problems] or [f"expected kind PolicyTest, found {found}"]
            run.results.append(CaseResult(str(path), f"document {document.index}", "schema", tuple(messages)))
            continue
        _run_document(path, result[1], run)


def _resolve_policies(base: Path, patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(base / pattern)))
        if not matches:
            missing.append(f"spec.policies: {pattern!r} matches no file (relative to {base})")
        files.extend(policy_files(matches))
    return list(dict.fromkeys(files)), missing


def _run_document(path: Path, fields: dict[str, Any], run: TestRun) -> None:
    name = fields["metadata"]["name"]
    spec = fields["spec"]
    files, missing = _resolve_policies(path.parent, spec["policies"])
    trust_domain = spec.get("trustDomain")
    policy_set: PolicySet | None = None
    if missing:
        load_errors = missing
    else:
        try:
            policy_set = load_policy_set(files, trust_domain=trust_domain)
            load_errors = []
        except PolicySetInvalid as exc:
            load_errors = [str(p) for p in exc.errors]
    expected_errors = spec.get("expectLoadErrors")
    if expected_errors is not None:
        mismatches = ["expected the set to be rejected, but it loaded"] if policy_set is not None else []
        mismatches += [
            f"no load error mentions {wanted!r}"
            for wanted in expected_errors
            if not any(wanted in e for e in load_errors)
        ]
        shown = "load errors:\n" + "\n".join(load_errors)
        run.results.append(CaseResult(str(path), name, "load errors", tuple(mismatches), shown))
        return
    if policy_set is not None:
        run.rules.update(r.qualified_name for p in policy_set.policies for r in p.rules)
    for case in spec.get("cases", []):
        run.results.append(_run_case(path, name, spec, case, policy_set, load_errors, run))


def _run_case(
    path: Path,
    test: str,
    spec: dict[str, Any],
    case: dict[str, Any],
    policy_set: PolicySet | None,
    load_errors: list[str],
    run: TestRun,
) -> CaseResult:
    trust_domain = policy_set.settings.trust_domain if policy_set else spec.get("trustDomain", DEFAULT_TRUST_DOMAIN)
    caller, request = case_inputs(case, trust_domain)
    now = case.get("clock", spec.get("clock")) or datetime.now(UTC)
    ca_not_after = case.get("ca", spec.get("ca", {})).get("notAfter")
    if policy_set is None:
        decision = deny(Outcome.UNAVAILABLE, "POLICY_SET_UNAVAILABLE", "the policy set did not load")
        explanation = "the policy set did not load:\n" + "\n".join(load_errors)
    else:
        decision = evaluate(policy_set, caller, request, now=now, ca_not_after=ca_not_after)
        explanation = ""
    mismatches = tuple(compare(case["expect"], decision))
    matched = matched_rule(decision)
    if matched and (decision.granted_by or decision.deny_rules):
        run.exercised.add(matched)
        run.exercised.update(decision.deny_rules)
    if mismatches and policy_set is not None:
        explanation = render_text(explain(policy_set, caller, request, now=now, ca_not_after=ca_not_after))
    return CaseResult(str(path), test, case["name"], mismatches, explanation, matched)


def case_inputs(case: dict[str, Any], trust_domain: str) -> tuple[Caller, IssuanceRequest]:
    """The Caller and IssuanceRequest a case describes; ``caller.impersonating`` makes the caller a node proxy."""
    who = case["caller"]
    caller_td = who.get("trustDomain", trust_domain)
    impersonated = who.get("impersonating")
    request_spec = case.get("request", {})
    if impersonated is not None:
        namespace, service_account = impersonated.split("/", 1)
        node = f"{who['namespace']}/{who['serviceAccount']}"
        caller = Caller(caller_td, namespace, service_account, who.get("podName"), who.get("podUID"), node)
        target: str | None = workload_spiffe_id(caller_td, namespace, service_account)
    else:
        caller = Caller(caller_td, who["namespace"], who["serviceAccount"], who.get("podName"), who.get("podUID"))
        target = None
    request = IssuanceRequest(
        uris=tuple(request_spec.get("uris", ())),
        dns_names=tuple(request_spec.get("dnsNames", ())),
        ip_addresses=tuple(request_spec.get("ipAddresses", ())),
        email_addresses=tuple(request_spec.get("emailAddresses", ())),
        other_san_types=tuple(request_spec.get("otherSANTypes", ())),
        common_name=request_spec.get("commonName"),
        is_ca=request_spec.get("isCA", False),
        key=request_spec.get("key", "ECDSA-P256"),
        usages=tuple(request_spec.get("usages", ())),
        unknown_extensions=tuple(request_spec.get("extensions", ())),
        validity_seconds=request_spec.get("validitySeconds", 0),
        impersonated_identity=target,
    )
    return caller, request


def compare(expect: dict[str, Any], decision: Decision) -> list[str]:
    """Every way ``decision`` differs from ``expect``; empty when it meets every expectation."""
    problems: list[str] = []
    codes = {decision.reason, *decision.flags}
    sub = decision.details.get("subReason")
    if sub:
        codes.add(str(sub))

    def differs(key: str, actual: object) -> None:
        if key in expect and expect[key] != actual:
            problems.append(f"{key}: expected {expect[key]!r}, got {actual!r}")

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
    if "denyRules" in expect and list(expect["denyRules"]) != list(decision.deny_rules):
        problems.append(f"denyRules: expected {expect['denyRules']}, got {list(decision.deny_rules)}")
    differs("durationSeconds", decision.duration_seconds)
    differs("notAfter", decision.not_after)
    if "flags" in expect and sorted(expect["flags"]) != sorted(decision.flags):
        problems.append(f"flags: expected {expect['flags']}, got {list(decision.flags)}")
    if "uris" in expect and list(expect["uris"]) != list(decision.uris):
        problems.append(f"uris: expected {expect['uris']}, got {list(decision.uris)}")
    if "dnsNames" in expect and list(expect["dnsNames"]) != list(decision.dns_names):
        problems.append(f"dnsNames: expected {expect['dnsNames']}, got {list(decision.dns_names)}")
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
