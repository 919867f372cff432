"""``when`` CEL conditions: compiled at load with located errors, bounded, and deny when they do not evaluate."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from policies.conditions import MAX_COST, MAX_LIST_ITEMS, ConditionCompiler, ConditionError
from policies.decider import Decision, IssuanceRequest, Outcome, Verdict
from policies.evaluator import evaluate
from policies.explain import explain
from policies.policy_set import PolicySet
from policies.problems import PolicySetInvalid
from tests.policies.conftest import CA_NOT_AFTER, NOW, build, caller, own_id, policy, request

OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def allow_when(*conditions: str, extra: str = "") -> str:
    when = ", ".join(repr(c) for c in conditions)
    return policy(
        "gated",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: gated\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      dnsNames: ['*.{{namespace}}.svc']\n      when: [{when}]\n{extra}",
    )


def deny_when(*conditions: str) -> str:
    when = ", ".join(repr(c) for c in conditions)
    body = f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: guard\n      effect: Deny\n      when: [{when}]\n"
    return policy("guard", body)


BASELINE = policy(
    "baseline",
    f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: own\n      effect: Allow\n      identities: ['{OWN}']\n",
)


def decide(
    policy_set: PolicySet,
    req: IssuanceRequest | None = None,
    *,
    namespace: str = "orders",
    labels: Mapping[str, str] | None = None,
    node: str | None = None,
) -> Decision:
    return evaluate(
        policy_set,
        caller(namespace, "web", node_principal=node),
        req or request(own_id(namespace)),
        now=NOW,
        ca_not_after=CA_NOT_AFTER,
        namespace_labels=lambda _ns: labels,
    )


def load_errors(*documents: str) -> list[str]:
    with pytest.raises(PolicySetInvalid) as caught:
        build(*documents)
    return [str(p) for p in caught.value.errors]


def test_a_true_condition_grants_and_a_false_one_does_not() -> None:
    policy_set = build(allow_when('caller.namespace.startsWith("prod-") && request.validitySeconds <= 3600'))
    granted = decide(policy_set, request(own_id("prod-a"), validity=3600), namespace="prod-a")
    assert (granted.verdict, granted.granted_by) == (Verdict.ALLOW, "gated/gated")
    refused = decide(policy_set, request(own_id("prod-a"), validity=7200), namespace="prod-a")
    assert (refused.reason, refused.details["subReason"]) == ("NO_MATCHING_RULE", "CONDITION_FALSE")
    assert "when[0]" in refused.message


def test_every_condition_of_a_rule_must_hold() -> None:
    policy_set = build(allow_when('request.key == "ECDSA-P256"', 'caller.serviceAccount == "api"'))
    assert decide(policy_set).reason == "NO_MATCHING_RULE"


def test_namespace_labels_hold_only_trusted_keys() -> None:
    trusted = build(allow_when('namespaceLabels["mesh.example.org/tier"] == "gold"'))
    gold = {"mesh.example.org/tier": "gold", "team": "a"}
    assert decide(trusted, labels=gold).allowed
    assert decide(trusted, labels={"mesh.example.org/tier": "bronze"}).reason == "NO_MATCHING_RULE"
    # "team" is not in trustedNamespaceLabelKeys: reading it is a missing key, an error, and denies.
    untrusted = build(allow_when('namespaceLabels["team"] == "a"'))
    refused = decide(untrusted, labels=gold)
    assert (refused.verdict, refused.reason, refused.outcome) == (
        Verdict.DENY,
        "CONDITION_ERROR",
        Outcome.PERMISSION_DENIED,
    )
    assert "gated/gated" in refused.message and "team" in refused.message
    named = build(allow_when('namespaceLabels["kubernetes.io/metadata.name"] == caller.namespace'))
    assert decide(named, labels={}).allowed


def test_labels_not_synced_are_a_retryable_evaluation_error() -> None:
    policy_set = build(allow_when('namespaceLabels["mesh.example.org/tier"] == "gold"'))
    assert policy_set.needs_namespace_labels
    refused = decide(policy_set, labels=None)
    assert (refused.reason, refused.outcome) == ("EVALUATION_ERROR", Outcome.UNAVAILABLE)


def test_a_condition_that_does_not_evaluate_denies_even_when_its_other_conditions_hold() -> None:
    policy_set = build(allow_when("request.validitySeconds / 0 == 1"))
    refused = decide(policy_set)
    assert refused.reason == "CONDITION_ERROR"
    assert refused.details["matched"] == "gated/gated"
    assert "divide by zero" in refused.message


def test_an_erroring_allow_rule_does_not_block_a_grant_from_another_rule() -> None:
    # Allow rules OR together: one that cannot say yes or no changes nothing when another says yes.
    policy_set = build(allow_when("request.validitySeconds / 0 == 1"), BASELINE)
    assert decide(policy_set).granted_by == "baseline/own"


def test_a_deny_rule_whose_condition_errors_denies() -> None:
    policy_set = build(BASELINE, deny_when('namespaceLabels["team"] == "x"'))
    refused = decide(policy_set, labels={})
    assert (refused.reason, refused.deny_rules) == ("CONDITION_ERROR", ("guard/guard",))
    assert "deny when unsure" in refused.message


def test_a_deny_rule_with_a_true_condition_denies_and_a_false_one_does_not() -> None:
    policy_set = build(BASELINE, deny_when('caller.nodePrincipal != ""'))
    assert decide(policy_set).allowed
    # a node account that impersonates: the deny rule's condition holds
    ztunnel = build(BASELINE, deny_when('caller.nodePrincipal == "istio-system/ztunnel"'))
    assert decide(ztunnel, node="istio-system/ztunnel").reason == "DENIED_BY_RULE"


def test_a_clean_deny_wins_over_an_unsure_one_in_the_reason() -> None:
    policy_set = build(BASELINE, deny_when("request.validitySeconds / 0 == 1"), deny_when("true").replace("guard", "z"))
    refused = decide(policy_set)
    assert refused.reason == "DENIED_BY_RULE"
    assert refused.deny_rules == ("guard/guard", "z/z")


def test_inputs_over_the_caps_are_an_error_not_a_slow_evaluation() -> None:
    policy_set = build(allow_when('request.dnsNames.all(n, n.endsWith(".svc"))'))
    names = tuple(f"n{i}.orders.svc" for i in range(MAX_LIST_ITEMS))
    assert decide(policy_set, request(own_id(), dns=names)).allowed
    refused = decide(policy_set, request(own_id(), dns=(*names, "one-more.orders.svc")))
    assert refused.reason == "CONDITION_ERROR"
    assert "request.dnsNames has 65 entries" in refused.message


def test_now_is_the_decision_time() -> None:
    policy_set = build(allow_when('now < timestamp("2026-06-01T00:00:01Z")'))
    assert decide(policy_set).allowed
    late = build(allow_when('now < timestamp("2026-06-01T00:00:00Z")'))
    assert not decide(late).allowed


def test_explain_shows_each_condition() -> None:
    policy_set = build(allow_when('request.key == "ECDSA-P256"', "request.validitySeconds > 7200"))
    explanation = explain(policy_set, caller(), request(own_id()), now=NOW, ca_not_after=CA_NOT_AFTER)
    rule = explanation.policies[0]["rules"][0]
    conditions = {c["condition"]: c for c in rule["conditions"]}
    assert conditions["when[0]"]["held"] is True
    assert conditions["when[1]"] == {
        "condition": "when[1]",
        "held": False,
        "expected": "request.validitySeconds > 7200",
        "actual": "false",
        "code": "CONDITION_FALSE",
        "why": "when[1] 'request.validitySeconds > 7200' is false",
    }


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ('caller.namespce == "x"', "1:7: undeclared reference to 'caller.namespce'"),
        ("request.validitySeconds", "must be a boolean condition, it returns INT"),
        ("request.validitySeconds + 'x' == 1", "found no matching overload for '_+_'"),
        ("caller.namespace ==", "Syntax error"),
        ("true && " * 200 + "true", "characters long; the limit is 1024"),
        (
            "request.dnsNames.all(a, request.uris.all(b, a == b))",
            f"exceeds {MAX_COST}",
        ),
    ],
)
def test_a_bad_condition_is_a_located_load_error(condition: str, message: str) -> None:
    errors = load_errors(allow_when(condition))
    assert len(errors) == 1
    assert errors[0].startswith("doc0.yaml:11:14: ")
    assert "spec.rules[0].when[0]: CEL: " in errors[0]
    assert message in errors[0]


def test_a_rule_takes_at_most_eight_conditions() -> None:
    errors = load_errors(allow_when(*(["true"] * 9)))
    assert any("spec.rules[0].when: 9 conditions; a rule takes at most 8" in e for e in errors)


def test_a_comprehension_over_a_literal_list_costs_its_size() -> None:
    compiler = ConditionCompiler()
    small = compiler.compile('["a", "b"].exists(x, x == caller.namespace)')
    over_variable = compiler.compile("request.dnsNames.exists(x, x == caller.namespace)")
    assert small.cost < over_variable.cost
    assert small.variables == frozenset({"caller.namespace"})
    assert over_variable.variables == frozenset({"request.dnsNames", "caller.namespace"})
    with pytest.raises(ConditionError, match="recursion limit exceeded"):
        compiler.compile("(" * 60 + "true" + ")" * 60)
    with pytest.raises(ConditionError, match=r"has \d+ expression nodes; the limit is 400"):
        compiler.compile("request.validitySeconds in [" + ",".join("1" * 450) + "]")


def test_explain_shows_an_erroring_deny_rule_as_matching() -> None:
    policy_set = build(BASELINE, deny_when("request.validitySeconds / 0 == 1"))
    explanation = explain(policy_set, caller(), request(own_id()), now=NOW, ca_not_after=CA_NOT_AFTER)
    assert explanation.decision.reason == "CONDITION_ERROR"
    guard = next(p for p in explanation.policies if p["policy"] == "guard")["rules"][0]
    assert guard["result"] == "matches (denies)"
    (condition,) = guard["conditions"]
    assert condition["code"] == "CONDITION_ERROR" and condition["actual"].startswith("error: ")
