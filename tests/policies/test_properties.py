"""The four property tests of docs/policy-format.md §Property tests.

Fuzz, order independence, metamorphic audit, monotonicity."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.decider import Caller, Decision, IssuanceRequest
from policies.evaluator import evaluate
from policies.loader import build_policy_set
from policies.policy_set import PolicySet
from policies.spiffe import InvalidSpiffeID, parse_spiffe_id

from .conftest import CA_NOT_AFTER, NOW, SECTION_2_1, TD

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REFERENCE_DOCUMENTS: list[dict[str, Any]] = [
    yaml.safe_load(path.read_text()) for path in sorted(SECTION_2_1.glob("*.yaml"))
]
NAMESPACES = ["orders", "payments", "payments-eu", "paymentsx", "prod-checkout", "kube-system"]
ACCOUNTS = ["web", "api", "worker-batch", "worker", "default", "legacy-etl"]
DURATIONS = [-3600, 0, 1, 60, 600, 3600, 43200, 86400, 172800, 259200, 604800, 2**40]
KEYS = ["ECDSA-P256", "ECDSA-P384", "ECDSA-P521", "RSA-1024", "RSA-2048", "RSA-4096", "Ed25519"]


def build(documents: list[dict[str, Any]]) -> PolicySet:
    return build_policy_set([(f"doc{i}.yaml", yaml.safe_dump(doc)) for i, doc in enumerate(documents)], trust_domain=TD)


REFERENCE = build(REFERENCE_DOCUMENTS)


def decide(policy_set: PolicySet, caller: Caller, request: IssuanceRequest) -> Decision:
    return evaluate(policy_set, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER)


def enforced_part(decision: Decision) -> Decision:
    """The decision without what Audit mode adds."""
    return dataclasses.replace(decision, audit_findings=())


@st.composite
def requests(draw: st.DrawFn) -> tuple[Caller, IssuanceRequest]:
    namespace, account = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(ACCOUNTS))
    own = f"spiffe://{TD}/ns/{namespace}/sa/{account}"
    other_ns, other_sa = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(ACCOUNTS))
    uri = draw(
        st.sampled_from(
            [
                own,
                own + "/shard/1",
                own + "/shard/1/2",
                f"spiffe://old.local/ns/{namespace}/sa/{account}",
                f"spiffe://{TD}/ns/{other_ns}/sa/{other_sa}",
                own + "/",
            ]
        )
    )
    dns_pool = [f"{account}.{namespace}.svc", f"{account}.{namespace}.svc.cluster.local", "*.payments.svc", "x.y"]
    dns = tuple(draw(st.lists(st.sampled_from(dns_pool), max_size=2)))
    request = IssuanceRequest(
        uris=(uri,),
        dns_names=dns,
        validity_seconds=draw(st.sampled_from(DURATIONS) | st.integers(-(2**20), 2**31)),
        key=draw(st.sampled_from(KEYS)),
    )
    return Caller(TD, namespace, account), request


GLOB_NAMES = st.sampled_from(["*", "orders", "payments*", "payments-*", "prod-*", "kube-system"])
ACCOUNT_GLOBS = st.sampled_from(["*", "web", "api", "worker-*", "default", "legacy-*"])


@st.composite
def subjects(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {"namespaces": draw(st.lists(GLOB_NAMES, min_size=1, max_size=2, unique=True))}
    if draw(st.booleans()):
        result["serviceAccounts"] = draw(st.lists(ACCOUNT_GLOBS, min_size=1, max_size=2, unique=True))
    return result


@st.composite
def deny_rules(draw: st.DrawFn, name: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name, "effect": "Deny"}
    if draw(st.booleans()):
        rule["subjects"] = draw(subjects())
    if draw(st.booleans()):
        rule["dnsNames"] = ["*.{namespace}.svc"]
    if draw(st.booleans()):
        rule["key"] = {"algorithms": draw(st.lists(st.sampled_from(KEYS[:5]), min_size=1, max_size=2, unique=True))}
    return rule


@st.composite
def audit_policies(draw: st.DrawFn) -> dict[str, Any]:
    """Any Audit-mode policy: Deny rules, broad Allow rules and limits."""
    rules: list[dict[str, Any]] = []
    if draw(st.booleans()):
        rules.append(draw(deny_rules("audit-deny")))
    if draw(st.booleans()):
        rules.append(
            {
                "name": "audit-allow",
                "effect": "Allow",
                "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"],
                "dnsNames": ["{serviceAccount}.{namespace}.svc", "*.payments.svc"],
                "allowWildcardDNSNames": True,
                "key": {"algorithms": KEYS[:5]},
            }
        )
    spec: dict[str, Any] = {"mode": "Audit", "priority": draw(st.integers(-5, 50)), "subjects": draw(subjects())}
    if rules:
        spec["rules"] = rules
    if draw(st.booleans()) or not rules:
        spec["limits"] = {"duration": {"max": draw(st.sampled_from(["1h", "12h", "48h"])), "onExceed": "Deny"}}
    return {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": "audit"},
        "spec": spec,
    }


GRANTABLE = (
    "spiffe://cluster.local/ns/orders/sa/web",
    "spiffe://cluster.local/ns/payments/sa/api",
    "spiffe://cluster.local/ns/payments/sa/api/shard/1",
)


def test_the_fuzz_property_reaches_its_allowed_branch() -> None:
    """The property below only asserts on allowed requests: the reference set must grant these to their owners."""
    for caller, uri in ((Caller(TD, "orders", "web"), GRANTABLE[0]), (Caller(TD, "payments", "api"), GRANTABLE[2])):
        assert decide(REFERENCE, caller, IssuanceRequest(uris=(uri,), validity_seconds=3600)).allowed, uri


@PROPERTY_SETTINGS
@given(
    caller=st.sampled_from([Caller(TD, "orders", "web"), Caller(TD, "payments", "api")]),
    uri=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(lambda raw: raw.decode("latin-1")),
        st.builds(
            lambda base, position, char: base[:position] + char + base[position:],
            st.sampled_from(["spiffe://cluster.local/ns/orders/sa/web", "spiffe://cluster.local/ns/payments/sa/api"]),
            st.integers(0, 45),
            st.sampled_from(["/", ".", "..", "%2e", "*", "A", " ", "\x00", "?", "#", "/shard/1"]),
        ),
        st.sampled_from(GRANTABLE),  # without these the allowed branch below is almost never reached
    ),
)
@example(caller=Caller(TD, "payments", "api"), uri="spiffe://cluster.local/ns/payments/sa/api/shard/1")
@example(caller=Caller(TD, "orders", "web"), uri="spiffe://cluster.local/ns/orders/sa/web")
def test_fuzzed_uris_are_only_allowed_when_byte_equal_to_a_rendered_template(caller: Caller, uri: str) -> None:
    decision = decide(REFERENCE, caller, IssuanceRequest(uris=(uri,), validity_seconds=3600))
    if not decision.allowed:
        return
    own = caller.spiffe_id
    rendered = {own, f"spiffe://old.local/ns/{caller.namespace}/sa/{caller.service_account}"}
    shard = uri.startswith(own + "/shard/") and caller.namespace == "payments"
    assert uri in rendered or shard, uri
    assert decision.uris == (uri,)
    try:
        assert str(parse_spiffe_id(uri)) == uri  # canonical: parsing never had to normalise it
    except InvalidSpiffeID as exc:  # pragma: no cover - would be a bug
        raise AssertionError(f"allowed a non-canonical ID {uri!r}: {exc}") from None


@PROPERTY_SETTINGS
@given(inputs=requests(), data=st.data())
def test_permuting_documents_or_rules_never_changes_a_decision(
    inputs: tuple[Caller, IssuanceRequest], data: st.DataObject
) -> None:
    caller, request = inputs
    expected = decide(REFERENCE, caller, request)
    documents = data.draw(st.permutations(REFERENCE_DOCUMENTS))
    assert decide(build(documents), caller, request) == expected
    shuffled = []
    for document in documents:
        document = dict(document, spec=dict(document["spec"]))
        if "rules" in document["spec"]:
            document["spec"]["rules"] = data.draw(st.permutations(document["spec"]["rules"]))
        shuffled.append(document)
    reordered = decide(build(shuffled), caller, request)
    assert (reordered.verdict, reordered.reason, set(reordered.deny_rules)) == (
        expected.verdict,
        expected.reason,
        set(expected.deny_rules),
    )


@PROPERTY_SETTINGS
@given(inputs=requests(), audit=audit_policies())
def test_adding_an_audit_policy_never_changes_an_enforced_decision(
    inputs: tuple[Caller, IssuanceRequest], audit: dict[str, Any]
) -> None:
    caller, request = inputs
    before = decide(REFERENCE, caller, request)
    after = decide(build([*REFERENCE_DOCUMENTS, audit]), caller, request)
    assert enforced_part(after) == dataclasses.replace(
        enforced_part(before), policy_set_revision=after.policy_set_revision
    )


@PROPERTY_SETTINGS
@given(inputs=requests(), data=st.data())
def test_adding_a_deny_rule_never_turns_a_deny_into_an_allow(
    inputs: tuple[Caller, IssuanceRequest], data: st.DataObject
) -> None:
    caller, request = inputs
    before = decide(REFERENCE, caller, request)
    rule = data.draw(deny_rules("added-deny"))
    if data.draw(st.booleans()):
        documents = [*REFERENCE_DOCUMENTS]
        index = next(i for i, d in enumerate(documents) if d["metadata"]["name"] == "compliance-denies")
        spec = dict(documents[index]["spec"], rules=[*documents[index]["spec"]["rules"], rule])
        documents[index] = dict(documents[index], spec=spec)
    else:
        extra = {
            "apiVersion": "meshsigner.io/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": "added"},
            "spec": {"subjects": data.draw(subjects()), "priority": data.draw(st.integers(-5, 50)), "rules": [rule]},
        }
        documents = [*REFERENCE_DOCUMENTS, extra]
    after = decide(build(documents), caller, request)
    if not before.allowed:
        assert not after.allowed


@PROPERTY_SETTINGS
@given(inputs=requests())
def test_closest_rule_ranking_counts_the_failures_explain_shows(inputs: tuple[Caller, IssuanceRequest]) -> None:
    """Step 7 ranks rules by a fast count; it must equal the failures the explanation lists."""
    from policies.evaluator import prepare
    from policies.rule_checks import check_allow, count_failures

    caller, request = inputs
    ctx = prepare(REFERENCE, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER, namespace_labels=None)
    if isinstance(ctx, Decision):
        return
    for policy in REFERENCE.policies:
        for rule in policy.allow_rules:
            if rule.subjects is None or rule.subjects.matches(ctx):
                explained = check_allow(rule, ctx, exhaustive=True)
                assert count_failures(rule, ctx) == len(explained.failures)
                assert check_allow(rule, ctx).ok == explained.ok == (not explained.failures)


WILDCARD_ALLOW = {
    "apiVersion": "meshsigner.io/v1alpha1",
    "kind": "IdentityPolicy",
    "metadata": {"name": "wildcards"},
    "spec": {
        "subjects": {"namespaces": ["*"]},
        "rules": [
            {
                "name": "wildcard-dns",
                "effect": "Allow",
                "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"],
                "allowWildcardDNSNames": True,
                "dnsNames": ["*.{namespace}.svc", "*.*.svc", "*.admin.payments.svc", "*.svc"],
            }
        ],
    },
}
DENIED_DNS_PATTERNS = [
    "admin.payments.svc",
    "adm*.payments.svc",
    "*-internal.{namespace}.svc",
    "admin.{namespace}.svc",
    "{serviceAccount}.{namespace}.svc",
    "*.svc",
    "admin.*.svc",
    "x.admin.payments.svc",
    "internal",
]
DNS_LABELS = st.sampled_from(["admin", "adminx", "api", "web", "x", "a-internal", "payments"]) | st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True
)


@PROPERTY_SETTINGS
@given(
    namespace=st.sampled_from(["payments", "orders"]),
    account=st.sampled_from(["api", "admin", "web"]),
    denied=st.lists(st.sampled_from(DENIED_DNS_PATTERNS), min_size=1, max_size=3, unique=True),
    wildcard=st.sampled_from(["*.payments.svc", "*.orders.svc", "*.svc", "*.admin.payments.svc", "*.x.svc"]),
    labels=st.lists(DNS_LABELS, min_size=1, max_size=5),
)
def test_a_granted_wildcard_name_never_covers_a_name_a_deny_rule_denies(
    namespace: str, account: str, denied: list[str], wildcard: str, labels: list[str]
) -> None:
    deny = {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": "dns-denies"},
        "spec": {"subjects": {"namespaces": ["*"]}, "rules": [{"name": "no", "effect": "Deny", "dnsNames": denied}]},
    }
    policy_set = build([WILDCARD_ALLOW, deny])
    who = Caller(TD, namespace, account)
    own = (who.spiffe_id,)
    granted = decide(policy_set, who, IssuanceRequest(uris=own, dns_names=(wildcard,), validity_seconds=3600))
    if not granted.allowed:
        return
    for label in labels:  # every name the certificate would be valid for
        covered = label + wildcard[1:]
        decision = decide(policy_set, who, IssuanceRequest(uris=own, dns_names=(covered,), validity_seconds=3600))
        assert decision.reason != "DENIED_BY_RULE", (wildcard, covered, denied)


OWN_TEMPLATE = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
DENY_IDENTITIES = [
    OWN_TEMPLATE,
    OWN_TEMPLATE + "/shard/*",
    OWN_TEMPLATE + "/pod/{podName}",
    "spiffe://{trustDomain}/ns/{namespace}/**",
    "spiffe://{trustDomain}/ns/*/sa/web",
    "spiffe://old.local/ns/*/sa/*",
    "spiffe://{trustDomain}/ns/{namespace}/sa/{nsLabel:mesh.example.org/tier}",
]
DENY_DNS = ["*.{namespace}.svc", "admin.payments.svc", "{podName}.{namespace}.svc", "{serviceAccount}.svc", "*.svc"]


@st.composite
def any_deny_rules(draw: st.DrawFn, name: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name, "effect": "Deny"}
    if draw(st.booleans()):
        rule["subjects"] = draw(subjects())
    if draw(st.booleans()):
        rule["identities"] = draw(st.lists(st.sampled_from(DENY_IDENTITIES), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        rule["dnsNames"] = draw(st.lists(st.sampled_from(DENY_DNS), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        rule["key"] = {"algorithms": draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))}
    if draw(st.booleans()):
        rule["expiresAt"] = draw(st.sampled_from(["2026-05-01T00:00:00Z", "2026-07-01T00:00:00Z"]))
        rule["ticket"] = "SEC-1"
    return rule


@PROPERTY_SETTINGS
@given(
    inputs=requests(),
    rules=st.lists(st.integers(0, 999), min_size=1, max_size=4, unique=True).flatmap(
        lambda ids: st.tuples(*(any_deny_rules(f"deny-{i}") for i in ids))
    ),
    pod=st.sampled_from([None, "web-1", "a.b"]),
    tier=st.sampled_from([None, "gold", "web", "a/b"]),
    extra_dns=st.lists(
        st.sampled_from(["*.payments.svc", "admin.payments.svc", "web-1.orders.svc", "x.svc"]), max_size=2
    ),
)
def test_deny_fast_path_and_explain_agree(
    inputs: tuple[Caller, IssuanceRequest],
    rules: tuple[dict[str, Any], ...],
    pod: str | None,
    tier: str | None,
    extra_dns: list[str],
) -> None:
    """The evaluator decides Deny rules with ``denies``; explain shows ``check_deny``. They must never disagree."""
    from policies.evaluator import prepare
    from policies.rule_checks import check_deny, denies

    caller, request = inputs
    caller = dataclasses.replace(caller, pod_name=pod)
    request = dataclasses.replace(request, dns_names=(*request.dns_names, *extra_dns))
    settings_document = next(d for d in REFERENCE_DOCUMENTS if d["kind"] == "PolicySettings")
    denies_policy = {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": "denies"},
        "spec": {"subjects": {"namespaces": ["*"]}, "rules": list(rules)},
    }
    policy_set = build([settings_document, denies_policy])
    labels = {} if tier is None else {"mesh.example.org/tier": tier}
    ctx = prepare(policy_set, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER, namespace_labels=lambda ns: labels)
    if isinstance(ctx, Decision):
        return
    for rule in policy_set.policies[0].deny_rules:
        explained = check_deny(rule, ctx)
        assert denies(rule, ctx) == explained.ok, (rule.name, [c for c in explained.checks if not c.held])
        assert explained.ok == all(c.held for c in explained.checks)


@st.composite
def limits_only_audits(draw: st.DrawFn, name: str) -> dict[str, Any]:
    duration: dict[str, Any] = {}
    if draw(st.booleans()):
        duration["max"] = draw(st.sampled_from(["1h", "12h", "24h", "48h"]))
        duration["onExceed"] = draw(st.sampled_from(["Clamp", "Deny"]))
    if draw(st.booleans()):
        duration["min"] = draw(st.sampled_from(["10m", "2h", "13h"]))
        duration["onBelow"] = draw(st.sampled_from(["Deny", "Raise"]))
    limits: dict[str, Any] = {"duration": duration} if duration else {}
    if draw(st.booleans()) or not limits:
        limits["key"] = draw(
            st.sampled_from(
                [{"minRSABits": 3072}, {"algorithms": ["ECDSA-P256", "RSA-2048"]}, {"algorithms": ["ECDSA-P384"]}]
            )
        )
    return {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": name},
        "spec": {
            "mode": "Audit",
            "priority": draw(st.integers(-5, 50)),
            "subjects": draw(subjects()),
            "limits": limits,
        },
    }


@st.composite
def granting_audits(draw: st.DrawFn) -> dict[str, Any]:
    """An Audit policy whose own Allow rule often grants first in its shadow (high priority, everyone, long)."""
    rule: dict[str, Any] = {
        "name": "audit-grant",
        "effect": "Allow",
        "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"],
        "duration": {"max": draw(st.sampled_from(["2h", "24h", "7d"])), "onExceed": "Clamp"},
    }
    rules = [rule]
    if draw(st.booleans()):
        rules.append(draw(deny_rules("audit-deny")))
    subjects_ = {"namespaces": ["*"]} if draw(st.integers(0, 3)) else draw(subjects())
    spec = {"mode": "Audit", "priority": draw(st.sampled_from([100, 100, -5])), "subjects": subjects_, "rules": rules}
    return {"apiVersion": "meshsigner.io/v1alpha1", "kind": "IdentityPolicy", "metadata": {"name": "x"}, "spec": spec}


# A granting Audit policy ordered before a limits-only one whose finding depends on the enforced grant: sharing
# one "remembered grant" between them made tighten-to-12h report 7200s (the audit rule's grant) instead of 43200s.
SHORT_GRANT_AUDIT = {
    "apiVersion": "meshsigner.io/v1alpha1",
    "kind": "IdentityPolicy",
    "metadata": {"name": "x"},
    "spec": {
        "mode": "Audit",
        "priority": 100,
        "subjects": {"namespaces": ["*"]},
        "rules": [
            {
                "name": "audit-grant",
                "effect": "Allow",
                "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"],
                "duration": {"max": "2h", "onExceed": "Clamp"},
            }
        ],
    },
}
ORDERS_WEB_DAY = (
    Caller(TD, "orders", "web"),
    IssuanceRequest(uris=(f"spiffe://{TD}/ns/orders/sa/web",), validity_seconds=86400),
)
KEY_LIMIT_AUDIT = {
    "apiVersion": "meshsigner.io/v1alpha1",
    "kind": "IdentityPolicy",
    "metadata": {"name": "limits-0"},
    "spec": {"mode": "Audit", "subjects": {"namespaces": ["*"]}, "limits": {"key": {"minRSABits": 3072}}},
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=requests(),
    audits=st.integers(1, 3).flatmap(lambda n: st.tuples(*(limits_only_audits(f"limits-{i}") for i in range(n)))),
    with_rules=st.one_of(st.none(), audit_policies(), granting_audits(), granting_audits()),
    ca=st.sampled_from(
        [CA_NOT_AFTER, NOW + timedelta(hours=12), NOW + timedelta(minutes=30), NOW + timedelta(seconds=1)]
    ),
)
@example(inputs=ORDERS_WEB_DAY, audits=(KEY_LIMIT_AUDIT,), with_rules=SHORT_GRANT_AUDIT, ca=CA_NOT_AFTER)
def test_limits_only_audit_findings_equal_those_of_the_full_shadow_decision(
    inputs: tuple[Caller, IssuanceRequest],
    audits: tuple[dict[str, Any], ...],
    with_rules: dict[str, Any] | None,
    ca: datetime,
) -> None:
    """The shortcut for limits-only Audit policies (no re-walk, no sort, the bound reused) must report exactly
    what the full shadow decision over the sorted entries reports."""
    from policies.evaluator import decide_over, prepare, select, shadow_findings

    caller, request = inputs
    extra = [dict(with_rules, metadata={"name": "audit-rules"})] if with_rules is not None else []
    policy_set = build([*REFERENCE_DOCUMENTS, *audits, *extra])
    decision = evaluate(policy_set, caller, request, now=NOW, ca_not_after=ca)

    ctx = prepare(policy_set, caller, request, now=NOW, ca_not_after=ca, namespace_labels=None)
    if isinstance(ctx, Decision):
        assert not decision.audit_findings
        return
    selection = select(policy_set, ctx)
    enforced = decide_over(policy_set, ctx, selection.enforced)
    expected = list(selection.audit_errors)
    for entry in selection.audited:
        shadow_entries = tuple(sorted((*selection.enforced, entry), key=lambda e: e.policy.order))
        expected.extend(shadow_findings(entry.policy, enforced, decide_over(policy_set, ctx, shadow_entries)))
    assert decision.audit_findings == tuple(expected)
