"""``meshsigner policy lint|test|explain``: the policy engine offline, for authors and CI.

``add_policy_commands`` registers the commands on the CLI's subparsers; each sets ``func(args) -> exit code``.
Exit codes: lint 0 valid / 1 invalid; test 0 all passed / 1 any failed; explain 0 Allow / 1 Deny / 2 the set did
not load or the input was unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies.decider import Caller, IssuanceRequest
from policies.explain import explain, render_text
from policies.loader import load_policy_set
from policies.policy_set import PolicySet
from policies.policy_test_runner import run_policy_tests
from policies.problems import PolicySetInvalid, Severity
from policies.schema_readers import parse_time


def add_policy_commands(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="lint, test and explain YAML identity policies offline")
    policy.set_defaults(func=lambda _args: _usage(policy))
    commands = policy.add_subparsers(dest="policy_command", metavar="{lint,test,explain}")

    lint = commands.add_parser("lint", help="validate a policy set as the server would")
    lint.add_argument("dirs", nargs="+", metavar="DIR", help="policy directories or files, loaded as one set")
    lint.add_argument("--trust-domain", help="the server's trust domain (checked against PolicySettings)")
    lint.set_defaults(func=lint_command)

    test = commands.add_parser("test", help="run PolicyTest fixtures")
    test.add_argument("files", nargs="+", metavar="FILE", help="PolicyTest YAML files")
    test.add_argument("--verbose", "-v", action="store_true", help="also list passing cases and unexercised rules")
    test.set_defaults(func=test_command)

    explain_parser = commands.add_parser("explain", help="explain the decision for one request")
    explain_parser.add_argument("--policies", required=True, metavar="DIR", help="policy directory")
    explain_parser.add_argument("--namespace", required=True, metavar="NS")
    explain_parser.add_argument("--service-account", required=True, metavar="SA")
    explain_parser.add_argument("--uri", action="append", default=[], metavar="URI", help="URI SAN (repeatable)")
    explain_parser.add_argument("--dns", action="append", default=[], metavar="NAME", help="DNS SAN (repeatable)")
    explain_parser.add_argument("--validity", type=int, default=0, metavar="SECONDS", help="requested lifetime")
    explain_parser.add_argument("--key", default="ECDSA-P256", metavar="ALG", help="e.g. ECDSA-P256, RSA-2048")
    explain_parser.add_argument("--usage", action="append", default=[], metavar="USAGE", help="key usage")
    explain_parser.add_argument("--clock", metavar="RFC3339", help="evaluation time (default: now)")
    explain_parser.add_argument("--ca-not-after", metavar="RFC3339", help="the CA certificate's notAfter")
    explain_parser.add_argument("--trust-domain", help="the caller's trust domain (default: the set's)")
    explain_parser.add_argument("--node", metavar="NS/SA", help="node account impersonating the workload")
    explain_parser.add_argument("--pod-name")
    explain_parser.add_argument("--pod-uid")
    explain_parser.add_argument("--output", choices=("text", "json"), default="text")
    explain_parser.set_defaults(func=explain_command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def lint_command(args: argparse.Namespace) -> int:
    policy_set = _lint(args.dirs, args.trust_domain, "policy set")
    if policy_set is None:
        return 1
    warnings = sum(w.severity is Severity.WARNING for w in policy_set.warnings)
    print(
        f"policy set valid: {len(policy_set.policies)} policies, {policy_set.rule_count} rules, "
        f"{warnings} warning(s), revision {policy_set.revision}"
    )
    shadow = policy_set.settings.shadow_policy_set
    directories = [Path(d) for d in args.dirs if Path(d).is_dir()]
    if shadow is None or not directories:
        return 0
    # The shadow set is a sub-directory of the policy directory, as the server reads it.
    shadow_set = _lint([directories[0] / shadow], args.trust_domain, f"shadow policy set {shadow!r}")
    if shadow_set is None:
        return 1
    print(f"shadow policy set {shadow!r} valid: {len(shadow_set.policies)} policies, revision {shadow_set.revision}")
    return 0


def _lint(dirs: Iterable[str | Path], trust_domain: str | None, what: str) -> PolicySet | None:
    """Load a set and print its problems (or warnings); None when it is invalid."""
    try:
        policy_set = load_policy_set(dirs, trust_domain=trust_domain)
    except PolicySetInvalid as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{what} invalid: {len(exc.errors)} error(s)")
        return None
    for warning in policy_set.warnings:
        print(warning)
    return policy_set


def test_command(args: argparse.Namespace) -> int:
    run = run_policy_tests(args.files)
    for result in run.results:
        if result.passed:
            if args.verbose:
                print(f"PASS {result.title}")
            continue
        print(f"FAIL {result.title}")
        for mismatch in result.mismatches:
            print(f"  {mismatch}")
        if result.explanation:
            print("  explanation:")
            print("\n".join("    " + line for line in result.explanation.splitlines()))
    if run.rules:
        unexercised = sorted(run.rules - run.exercised)
        print(f"rule coverage: {len(run.rules) - len(unexercised)}/{len(run.rules)} rules decided a case")
        if unexercised and args.verbose:
            print("  not exercised: " + ", ".join(unexercised))
    print(f"{run.passed} passed, {run.failed} failed")
    return 0 if run.failed == 0 else 1


def explain_command(args: argparse.Namespace) -> int:
    try:
        policy_set = load_policy_set([args.policies])
    except PolicySetInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("the policy set did not load: every request would be denied POLICY_SET_UNAVAILABLE", file=sys.stderr)
        return 2
    try:
        now = parse_time(args.clock) if args.clock else datetime.now(UTC)
        ca_not_after = parse_time(args.ca_not_after) if args.ca_not_after else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    trust_domain = args.trust_domain or policy_set.settings.trust_domain
    caller = Caller(trust_domain, args.namespace, args.service_account, args.pod_name, args.pod_uid, args.node)
    impersonated = caller.spiffe_id if args.node else None
    request = IssuanceRequest(
        uris=tuple(args.uri),
        dns_names=tuple(args.dns),
        key=args.key,
        usages=tuple(args.usage),
        validity_seconds=args.validity,
        impersonated_identity=impersonated,
    )
    explanation = explain(policy_set, caller, request, now=now, ca_not_after=ca_not_after)
    if args.output == "json":
        print(json.dumps(explanation.as_dict(), indent=2, default=str))
    else:
        print(render_text(explanation))
    return 0 if explanation.decision.allowed else 1
