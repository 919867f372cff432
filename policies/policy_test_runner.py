"""Runs ``kind: PolicyTest`` documents for ``meshsigner policy test``: policy authors' fixtures, run in their CI.

This is shipped code behind a CLI command, not a helper of this repository's own test suite.

Each document names its policies by globs relative to the test file, a clock, the CA's notAfter and cases of
(caller, request, expect). Expectations are checked field by field; a failing case carries the full explain
text so CI logs say why. A set that does not load makes every case see POLICY_SET_UNAVAILABLE (exactly what the
server would answer), unless the document lists ``expectLoadErrors``, in which case the load must fail with them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies.decider import Caller, IssuanceRequest, Outcome, deny, matched_rule
from policies.document_schemas import read_document
from policies.evaluator import evaluate
from policies.expectations import expectation_mismatches
from policies.explain import explain, render_text
from policies.loader import load_policy_set, policy_files
from policies.policy_set import PolicySet
from policies.problems import PolicySetInvalid
from policies.schema_readers import Reporter
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


@dataclass(frozen=True, slots=True)
class PolicyTestRun:
    """Every case result of a run, the rules of the sets under test and the rules that decided a case."""

    results: tuple[CaseResult, ...]
    rules: frozenset[str]  # every rule of the sets under test
    exercised: frozenset[str]  # rules that decided at least one case

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


@dataclass(frozen=True, slots=True)
class _DocumentRun:
    """What one PolicyTest document (or a file that could not be read as one) contributes to the run."""

    results: tuple[CaseResult, ...]
    rules: frozenset[str] = frozenset()
    exercised: frozenset[str] = frozenset()


def run_policy_tests(paths: Iterable[str | Path]) -> PolicyTestRun:
    """Run every PolicyTest document of ``paths``, in order."""
    parts = [part for path in paths for part in _run_file(Path(path))]
    return PolicyTestRun(
        results=tuple(result for part in parts for result in part.results),
        rules=frozenset(rule for part in parts for rule in part.rules),
        exercised=frozenset(rule for part in parts for rule in part.exercised),
    )


def _run_file(path: Path) -> list[_DocumentRun]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [_DocumentRun((CaseResult(str(path), "-", "read", (f"cannot read: {exc}",)),))]
    documents, problems = parse_documents(text, str(path))
    parts: list[_DocumentRun] = []
    if problems:
        parts.append(_DocumentRun((CaseResult(str(path), "-", "parse", tuple(str(p) for p in problems)),)))
    for document in documents:
        report = Reporter(str(path))
        result = read_document(document.node, report)
        if result is None or result[0] != "PolicyTest":
            found = result[0] if result is not None else "an invalid document"
            messages = [str(p) for p in report.problems] or [f"expected kind PolicyTest, found {found}"]
            failed = CaseResult(str(path), f"document {document.index}", "schema", tuple(messages))
            parts.append(_DocumentRun((failed,)))
            continue
        parts.append(_run_document(path, result[1]))
    return parts


def _resolve_policies(base: Path, patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(base / pattern)))
        if not matches:
            missing.append(f"spec.policies: {pattern!r} matches no file (relative to {base})")
        files.extend(policy_files(matches))
    return list(dict.fromkeys(files)), missing


def _run_document(path: Path, fields: dict[str, Any]) -> _DocumentRun:
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
        return _DocumentRun((CaseResult(str(path), name, "load errors", tuple(mismatches), shown),))
    rules = frozenset(r.qualified_name for p in policy_set.policies for r in p.rules) if policy_set else frozenset()
    cases = [_run_case(path, name, spec, case, policy_set, load_errors) for case in spec.get("cases", [])]
    return _DocumentRun(
        results=tuple(result for result, _ in cases),
        rules=rules,
        exercised=frozenset(rule for _, deciding in cases for rule in deciding),
    )


def _run_case(
    path: Path,
    test: str,
    spec: dict[str, Any],
    case: dict[str, Any],
    policy_set: PolicySet | None,
    load_errors: list[str],
) -> tuple[CaseResult, tuple[str, ...]]:
    """The case's result and the rules that decided it (the granting or Deny rules; none for other refusals)."""
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
    mismatches = tuple(expectation_mismatches(case["expect"], decision))
    matched = matched_rule(decision)
    deciding: tuple[str, ...] = ()
    if matched and (decision.granted_by or decision.deny_rules):
        deciding = (matched, *decision.deny_rules)
    if mismatches and policy_set is not None:
        explanation = render_text(explain(policy_set, caller, request, now=now, ca_not_after=ca_not_after))
    return CaseResult(str(path), test, case["name"], mismatches, explanation, matched), deciding


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
