"""The policy set's index must find exactly what testing every policy and rule finds (policy_set.scan_applicable)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.context import EvaluationContext
from policies.decider import Caller, IssuanceRequest
from policies.loader import build_policy_set
from policies.policy_set import Applicable, PolicySet, scan_applicable

from .conftest import CA_NOT_AFTER, NOW, TD

NAMESPACES = ["orders", "payments", "payments-eu", "paymentsx", "team-1", "team-1-canary", "team-12", "kube-system"]
ACCOUNTS = ["web", "api", "worker-batch", "worker", "legacy-etl", "default"]
ODD_NAMES = ["", "ns", "sa", "a/b", "payments/web"]  # "/" shifts principal segments: the index must not be fooled
NAME_GLOBS = ["*", "orders", "payments", "payments*", "payments-*", "*-eu", "*x", "team-1*", "team-*-canary", "p*s"]
ACCOUNT_GLOBS = ["*", "web", "api", "worker-*", "*-etl", "legacy-*", "w*b", "worker"]
OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


@st.composite
def principal_globs(draw: st.DrawFn) -> str:
    namespace, account = draw(st.sampled_from(NAME_GLOBS)), draw(st.sampled_from(ACCOUNT_GLOBS))
    domain = draw(st.sampled_from([TD, "*", "other.local"]))
    return draw(
        st.sampled_from(
            [f"{domain}/ns/{namespace}/sa/{account}", f"{domain}/ns/{namespace}/**", f"{domain}/**", "*/ns/*/sa/*"]
        )
    )


@st.composite
def subject_blocks(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {}
    globs = st.lists(st.sampled_from(NAME_GLOBS), min_size=1, max_size=3, unique=True)
    accounts = st.one_of(
        st.sampled_from(ACCOUNT_GLOBS),
        st.builds(lambda n, a: f"{n}/{a}", st.sampled_from(NAME_GLOBS), st.sampled_from(ACCOUNT_GLOBS)),
    )
    if draw(st.booleans()):
        block["namespaces"] = draw(globs)
    if draw(st.integers(0, 4)) == 0:
        block["notNamespaces"] = draw(globs)
    if draw(st.booleans()):
        block["serviceAccounts"] = draw(st.lists(accounts, min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 4)) == 0:
        block["notServiceAccounts"] = draw(st.lists(accounts, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 2)) == 0:
        block["principals"] = draw(st.lists(principal_globs(), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 5)) == 0:
        block["notPrincipals"] = draw(st.lists(principal_globs(), min_size=1, max_size=2, unique=True))
    return block or {"namespaces": ["*"]}


@st.composite
def policy_documents(draw: st.DrawFn, index: int) -> dict[str, Any]:
    # Up to 12 rules, so some policies pass the size from which their rules get an index of their own.
    rules = []
    for number in range(draw(st.integers(0, 12))):
        rule: dict[str, Any] = {"name": f"r{number}"}
        if draw(st.booleans()):
            rule.update(effect="Allow", identities=[OWN])
        else:
            rule.update(effect="Deny", dnsNames=["*.internal"])
        if draw(st.integers(0, 3)) > 0:
            rule["subjects"] = draw(subject_blocks())
        rules.append(rule)
    spec: dict[str, Any] = {
        "mode": draw(st.sampled_from(["Enforce", "Enforce", "Audit", "Disabled"])),
        "priority": draw(st.integers(0, 3)),
        "subjects": draw(subject_blocks()),
        "limits": {"duration": {"max": "24h"}},
    }
    if rules:
        spec["rules"] = rules
    return {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": f"p{index}"},
        "spec": spec,
    }


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    count = draw(st.integers(1, 8))
    documents = [draw(policy_documents(index)) for index in range(count)]
    return build_policy_set([(f"p{i}.yaml", yaml.safe_dump(d)) for i, d in enumerate(documents)], trust_domain=TD)


def context(namespace: str, account: str) -> EvaluationContext:
    return EvaluationContext(
        Caller(TD, namespace, account),
        IssuanceRequest(uris=()),
        (),
        now=NOW,
        ca_not_after=CA_NOT_AFTER,
        primary_trust_domain=TD,
        cluster_domain="cluster.local",
        namespace_labels=None,
    )


def names(entries: tuple[Applicable, ...]) -> list[tuple[str, list[str], list[str]]]:
    return [(e.policy.name, [r.name for r in e.allow_rules], [r.name for r in e.deny_rules]) for e in entries]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_set=policy_sets())
def test_the_index_finds_exactly_the_policies_and_rules_a_full_scan_finds(policy_set: PolicySet) -> None:
    # Every caller of the pools: a lookup costs microseconds, and each pair probes other index entries.
    for namespace in NAMESPACES + ODD_NAMES:
        for account in ACCOUNTS + ODD_NAMES:
            ctx = context(namespace, account)
            expected = names(scan_applicable(policy_set.policies, ctx))
            assert names(policy_set.lookup(ctx)) == expected, (namespace, account)
            assert names(policy_set.applicable(ctx)) == expected, (namespace, account)


def test_a_policy_pinned_by_principals_or_namespaced_accounts_is_found_only_in_its_namespace() -> None:
    """The cases the index exists for, checked against the scan so the scan's own answer is known here too."""
    documents = [
        {"subjects": {"principals": [f"{TD}/ns/orders/sa/*"]}},
        {"subjects": {"serviceAccounts": ["payments/api", "payments/worker-*"]}},
        {"subjects": {"namespaces": ["team-*"], "serviceAccounts": ["web"]}},
        {"subjects": {"serviceAccounts": ["legacy-*"]}},
        {"subjects": {"principals": [f"{TD}/ns/payments/**"]}},
    ]
    sources = [
        (
            f"p{i}.yaml",
            yaml.safe_dump(
                {
                    "apiVersion": "meshsigner.io/v1alpha1",
                    "kind": "IdentityPolicy",
                    "metadata": {"name": f"p{i}"},
                    "spec": {**spec, "rules": [{"name": "own", "effect": "Allow", "identities": [OWN]}]},
                }
            ),
        )
        for i, spec in enumerate(documents)
    ]
    policy_set = build_policy_set(sources, trust_domain=TD)
    cases = {
        ("orders", "web"): ["p0"],
        ("payments", "worker-1"): ["p1", "p4"],
        ("payments", "web"): ["p4"],
        ("payments/web", "x"): ["p4"],  # a "/" in a name shifts the principal's segments: found all the same
        ("team-9", "web"): ["p2"],
        ("team-9", "legacy-etl"): ["p3"],
        ("orders", "legacy-etl"): ["p0", "p3"],
    }
    for (namespace, account), expected in cases.items():
        ctx = context(namespace, account)
        assert [e.policy.name for e in policy_set.lookup(ctx)] == expected, (namespace, account)
        assert names(scan_applicable(policy_set.policies, ctx)) == names(policy_set.lookup(ctx))
