"""Namespaced IdentityPolicy objects (the Kubernetes source): outside the root namespace a policy is confined to
its own namespace, so a namespace's owners hold grants only within their namespace."""

from __future__ import annotations

import pytest

from policies.evaluator import evaluate
from policies.loader import build_policy_set
from policies.policy_set import PolicySet
from policies.problems import PolicySetInvalid
from tests.policies.conftest import CA_NOT_AFTER, NOW, SETTINGS, TD, caller, own_id, request

OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
ROOT = "istio-system"


def namespaced(namespace: str, body: str, name: str = "grants") -> str:
    return (
        "apiVersion: meshsigner.io/v1alpha1\nkind: IdentityPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}"
    )


def dns_grant(namespace: str, dns: str, subjects: str = "") -> str:
    return namespaced(
        namespace,
        f"{subjects}  rules:\n    - name: dns\n      effect: Allow\n      identities: ['{OWN}']\n"
        f"      dnsNames: ['{dns}']\n",
    )


def build(*documents: str, root_namespace: str | None = ROOT) -> PolicySet:
    sources = [("settings.yaml", SETTINGS), *((f"doc{i}.yaml", d) for i, d in enumerate(documents))]
    return build_policy_set(sources, trust_domain=TD, root_namespace=root_namespace)


def errors(*documents: str) -> list[str]:
    with pytest.raises(PolicySetInvalid) as caught:
        build(*documents)
    return [str(p) for p in caught.value.errors]


def allowed(policy_set: PolicySet, namespace: str, dns: str) -> bool:
    decision = evaluate(
        policy_set,
        caller(namespace, "api"),
        request(own_id(namespace, "api"), dns=(dns,)),
        now=NOW,
        ca_not_after=CA_NOT_AFTER,
    )
    return decision.allowed


def test_a_policy_outside_the_root_namespace_applies_only_to_its_own_namespace() -> None:
    policy_set = build(dns_grant("payments", "{serviceAccount}.{namespace}.svc"))
    assert policy_set.policies[0].name == "payments:grants"
    assert allowed(policy_set, "payments", "api.payments.svc")
    assert not allowed(policy_set, "orders", "api.orders.svc")  # no subjects written: still only payments


def test_a_root_namespace_policy_applies_everywhere() -> None:
    root = dns_grant(ROOT, "{serviceAccount}.{namespace}.svc", "  subjects: {namespaces: ['*']}\n")
    policy_set = build(root)
    assert policy_set.policies[0].name == "grants"
    assert allowed(policy_set, "orders", "api.orders.svc")


def test_selecting_other_namespaces_is_an_error() -> None:
    found = errors(dns_grant("payments", "{serviceAccount}.{namespace}.svc", "  subjects: {namespaces: ['*']}\n"))
    assert found == [
        "doc0.yaml:5:14: spec.subjects.namespaces: a policy in namespace 'payments' applies only to that "
        "namespace: write [payments] or omit it"
    ]
    assert build(dns_grant("payments", "{namespace}.svc", "  subjects: {namespaces: [payments]}\n"))


@pytest.mark.parametrize(
    "dns",
    ["api.orders.svc", "{serviceAccount}.orders.svc", "login.example.com", "*.svc", "{namespace}.svc.evil.com"],
)
def test_dns_names_outside_the_namespace_cannot_be_granted(dns: str) -> None:
    found = errors(dns_grant("payments", dns))
    assert len(found) == 1 and "spec.rules[0].dnsNames[0]: a policy in namespace 'payments' may grant only" in found[0]


@pytest.mark.parametrize(
    "dns", ["api.payments.svc", "*.{namespace}.svc", "{serviceAccount}.{namespace}.svc.cluster.local"]
)
def test_dns_names_of_the_namespace_can_be_granted(dns: str) -> None:
    assert build(dns_grant("payments", dns))


def test_cross_namespace_identities_cannot_be_granted() -> None:
    body = (
        "  rules:\n    - name: other\n      effect: Allow\n      allowCrossNamespace: true\n"
        "      identities: ['spiffe://{trustDomain}/ns/orders/sa/web']\n"
    )
    found = errors(namespaced("payments", body))
    assert any("spec.rules[0].allowCrossNamespace: a policy in namespace 'payments' cannot grant" in e for e in found)


def test_the_same_name_in_two_namespaces_is_two_policies() -> None:
    policy_set = build(dns_grant("payments", "{namespace}.svc"), dns_grant("orders", "{namespace}.svc"))
    assert sorted(p.name for p in policy_set.policies) == ["orders:grants", "payments:grants"]


def test_the_directory_source_ignores_metadata_namespace_as_before() -> None:
    policy_set = build(
        dns_grant("payments", "{serviceAccount}.{namespace}.svc", "  subjects: {namespaces: ['*']}\n"),
        root_namespace=None,
    )
    assert policy_set.policies[0].name == "grants"
    assert allowed(policy_set, "orders", "api.orders.svc")
