"""``meshsigner policy lint|test|explain``: the policy engine offline, for authors and CI.

``add_policy_commands`` registers the commands on the CLI's subparsers; each sets ``func(args) -> exit code``.
``lint`` and ``explain`` also read the live set of a cluster (``--kubeconfig``, the IdentityPolicy and
PolicySettings objects ``--policy-source kubernetes`` serves) through the ``live_objects`` reader the CLI passes in.
Exit codes: lint 0 valid / 1 invalid; test 0 all passed / 1 any failed; explain 0 Allow / 1 Deny / 2 the set did
not load or the input was unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies.decider import Caller, IssuanceRequest
from policies.explain import explain, render_text
from policies.loader import load_policy_set
from policies.object_documents import build_object_policy_set, build_object_shadow_set
from policies.policy_set import PolicySet
from policies.policy_test_runner import run_policy_tests
from policies.problems import PolicySetInvalid, Severity
from policies.schema_readers import parse_time

LiveObjects = Callable[[str, str], list[dict[str, Any]]]  # (kubeconfig, label selector) -> the policy objects
DEFAULT_ROOT_NAMESPACE = "istio-system"  # as serve's --policy-root-namespace


def add_policy_commands(subparsers: Any, *, live_objects: LiveObjects | None = None) -> None:
    """``live_objects`` reads a cluster's policy objects (the CLI's, from bridge); without it ``--kubeconfig``
    is refused."""
    policy = subparsers.add_parser("policy", help="lint, test and explain YAML identity policies offline")
    policy.set_defaults(func=lambda _args: _usage(policy))
    commands = policy.add_subparsers(dest="policy_command", metavar="{lint,test,explain}")

    lint = commands.add_parser("lint", help="validate a policy set as the server would")
    lint.add_argument("dirs", nargs="*", metavar="DIR", help="policy directories or files, loaded as one set")
    lint.add_argument("--trust-domain", help="the server's trust domain (checked against PolicySettings)")
    _live_arguments(lint, live_objects)
    lint.set_defaults(func=lint_command)

    test = commands.add_parser("test", help="run PolicyTest fixtures")
    test.add_argument("files", nargs="+", metavar="FILE", help="PolicyTest YAML files")
    test.add_argument("--verbose", "-v", action="store_true", help="also list passing cases and unexercised rules")
    test.set_defaults(func=test_command)

    explain_parser = commands.add_parser("explain", help="explain the decision for one request")
    explain_parser.add_argument("--policies", metavar="DIR", help="policy directory (or --kubeconfig)")
    _live_arguments(explain_parser, live_objects)
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


def _live_arguments(parser: argparse.ArgumentParser, live_objects: LiveObjects | None) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE", help="read the cluster's live policy objects instead")
    parser.add_argument(
        "--root-namespace",
        default=DEFAULT_ROOT_NAMESPACE,
        help="with --kubeconfig: as serve's --policy-root-namespace (default: istio-system)",
    )
    parser.add_argument("--label-selector", default="", help="with --kubeconfig: as serve's --policy-label-selector")
    parser.set_defaults(live_objects=live_objects)


def _read_live(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The cluster's policy objects; None (after saying why) when they cannot be read: exit code 2."""
    if args.live_objects is None:
        print("error: --kubeconfig: this build reads no cluster", file=sys.stderr)
        return None
    try:
        objects: list[dict[str, Any]] = args.live_objects(args.kubeconfig, args.label_selector)
    except Exception as exc:  # the reader's errors (unreachable, forbidden, no CRDs) are the user's to fix
        print(f"error: cannot read the policy objects: {exc}", file=sys.stderr)
        return None
    return objects


def _one_source(args: argparse.Namespace, paths: list[str]) -> str | None:
    """Why the arguments name no source or two (directories and --kubeconfig), or None."""
    if args.kubeconfig and paths:
        return "give policy directories or --kubeconfig, not both"
    if not args.kubeconfig and not paths:
        return "give policy directories, or --kubeconfig for the cluster's live set"
    return None


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def lint_command(args: argparse.Namespace) -> int:
    if (wrong := _one_source(args, args.dirs)) is not None:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    if args.kubeconfig:
        return _lint_live(args)
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


def _lint_live(args: argparse.Namespace) -> int:
    objects = _read_live(args)
    if objects is None:
        return 2
    try:
        policy_set = build_object_policy_set(
            objects, trust_domain=args.trust_domain, root_namespace=args.root_namespace
        )
    except PolicySetInvalid as exc:
        for problem in exc.problems:
            print(problem)
        print(f"live policy set invalid: {len(exc.errors)} error(s)")
        return 1
    for warning in policy_set.warnings:
        print(warning)
    print(
        f"live policy set valid: {len(policy_set.policies)} policies, {policy_set.rule_count} rules, "
        f"revision {policy_set.revision}"
    )
    shadow = policy_set.settings.shadow_policy_set
    if shadow is None:
        return 0
    # The shadow set is the IdentityPolicy objects labelled with its name, as the server reads it.
    try:
        shadow_set = build_object_shadow_set(
            objects, shadow, trust_domain=args.trust_domain, root_namespace=args.root_namespace
        )
    except PolicySetInvalid as exc:
        for problem in exc.problems:
            print(problem)
        print(f"live shadow policy set {shadow!r} invalid: {len(exc.errors)} error(s)")
        return 1
    print(
        f"live shadow policy set {shadow!r} valid: {len(shadow_set.policies)} policies, revision {shadow_set.revision}"
    )
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
    if (wrong := _one_source(args, [args.policies] if args.policies else [])) is not None:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    objects = _read_live(args) if args.kubeconfig else []
    if objects is None:
        return 2
    try:
        if args.kubeconfig:
            policy_set = build_object_policy_set(objects, trust_domain=None, root_namespace=args.root_namespace)
        else:
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
