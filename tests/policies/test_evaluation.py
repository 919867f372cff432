"""Decision semantics beyond the §4 table: limits, CA validity, labels, audit, modes, deny-rule conditions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from policies.builtin import OwnIdentityOnly
from policies.client_messages import client_message
from policies.context import NamespaceLabels
from policies.decider import Caller, Decision, IssuanceRequest, Outcome, Verdict, deny, matched_rule
from policies.decision_records import decision_record
from policies.evaluator import evaluate
from policies.policy_set import PolicySet

from .conftest import CA_NOT_AFTER, NOW, SETTINGS, TD, build, caller, own_id, policy, request

OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
BASELINE = policy(
    "baseline",
    f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: own\n      effect: Allow\n      identities: ['{OWN}']\n"
    "      duration: {max: 24h, onExceed: Clamp}\n",
)


def decide(
    policy_set: PolicySet,
    who: Caller | None = None,
    req: IssuanceRequest | None = None,
    *,
    now: datetime = NOW,
    ca: datetime | None = CA_NOT_AFTER,
    labels: NamespaceLabels | None = None,
) -> Decision:
    return evaluate(
        policy_set, who or caller(), req or request(own_id()), now=now, ca_not_after=ca, namespace_labels=labels
    )


def limits(name: str, body: str, mode: str = "Enforce") -> str:
    return policy(name, f"  mode: {mode}\n  subjects: {{namespaces: ['*']}}\n  limits: {body}\n")


def test_binding_limit_with_on_exceed_deny_wins_a_tie() -> None:
    clamp = limits("a-clamp", "{duration: {max: 2h, onExceed: Clamp}}")
    deny = limits("b-deny", "{duration: {max: 2h, onExceed: Deny}}")
    decision = decide(build(BASELINE, clamp, deny), req=request(own_id(), validity=3 * 3600))
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "DURATION_TOO_LONG")
    assert matched_rule(decision) == "b-deny/limits"
    within = decide(build(BASELINE, clamp, deny), req=request(own_id(), validity=3600))
    assert within.allowed and within.duration_seconds == 3600


def test_limits_clamp_and_are_reported() -> None:
    decision = decide(build(BASELINE, limits("tight", "{duration: {max: 2h}}")), req=request(own_id(), validity=86400))
    assert decision.allowed and decision.duration_seconds == 7200
    assert "DURATION_CLAMPED" in decision.flags
    assert decision.limits_applied == ("tight/limits",)
    assert decision.details["boundBy"] == ["tight/limits"]


def test_a_defaulted_duration_is_clamped_even_when_the_limit_says_deny() -> None:
    decision = decide(
        build(BASELINE, limits("tight", "{duration: {max: 2h, onExceed: Deny}}")), req=request(own_id(), validity=0)
    )
    assert decision.allowed and decision.duration_seconds == 7200
    assert decision.flags == ("DURATION_DEFAULTED", "DURATION_CLAMPED")


def test_empty_limit_range_denies() -> None:
    decision = decide(build(BASELINE, limits("low", "{duration: {min: 3h}}"), limits("high", "{duration: {max: 2h}}")))
    assert decision.reason == "DURATION_RANGE_EMPTY"


def test_limit_below_minimum_raises_or_denies() -> None:
    raise_ = decide(build(BASELINE, limits("floor", "{duration: {min: 2h, onBelow: Raise}}")))
    assert raise_.allowed and raise_.duration_seconds == 7200 and "DURATION_RAISED" in raise_.flags
    deny = decide(build(BASELINE, limits("floor", "{duration: {min: 2h}}")))
    assert deny.reason == "DURATION_TOO_SHORT"


def test_key_limits_deny_a_granted_request() -> None:
    policy_set = build(BASELINE, limits("keys", "{key: {minRSABits: 3072}}"))
    assert decide(policy_set, req=request(own_id(), key="RSA-2048")).reason == "KEY_NOT_ALLOWED"
    assert decide(policy_set, req=request(own_id(), key="RSA-3072")).allowed


def test_a_partial_rule_key_block_keeps_the_settings_algorithms() -> None:
    """key: {minRSABits: 4096} on a rule tightens RSA; it must not drop the algorithm list (any key)."""
    p256_only = SETTINGS + "  key: {algorithms: [ECDSA-P256]}\n"
    rule = BASELINE.replace("      duration:", "      key: {minRSABits: 4096}\n      duration:")
    policy_set = build(rule, settings=p256_only)
    assert decide(policy_set, req=request(own_id(), key="ECDSA-P256")).allowed
    for key in ("Ed25519", "ECDSA-P521", "RSA-4096", "RSA-1024"):
        refused = decide(policy_set, req=request(own_id(), key=key))
        assert (refused.reason, refused.details["subReason"]) == ("NO_MATCHING_RULE", "KEY_NOT_ALLOWED"), key
    # An explicit list on the rule still wins over the settings' list, and keeps the rule's own minimum.
    listed = BASELINE.replace(
        "      duration:", "      key: {algorithms: [RSA-2048, RSA-4096], minRSABits: 4096}\n      duration:"
    )
    policy_set = build(listed, settings=p256_only)
    assert decide(policy_set, req=request(own_id(), key="RSA-4096")).allowed
    assert not decide(policy_set, req=request(own_id(), key="RSA-2048")).allowed
    assert not decide(policy_set, req=request(own_id(), key="ECDSA-P256")).allowed


def test_a_partial_settings_key_block_keeps_the_default_algorithms() -> None:
    policy_set = build(BASELINE, settings=SETTINGS + "  key: {minRSABits: 3072}\n")
    assert decide(policy_set, req=request(own_id(), key="RSA-3072")).allowed
    assert decide(policy_set, req=request(own_id(), key="ECDSA-P384")).allowed
    for key in ("Ed25519", "Ed448", "ECDSA-P521", "RSA-2048"):
        assert decide(policy_set, req=request(own_id(), key=key)).details["subReason"] == "KEY_NOT_ALLOWED", key


def test_a_partial_rule_key_block_inherits_the_settings_minimum() -> None:
    policy_set = build(
        BASELINE.replace("      duration:", "      key: {algorithms: [RSA-2048, RSA-3072]}\n      duration:"),
        settings=SETTINGS + "  key: {minRSABits: 3072}\n",
    )
    assert decide(policy_set, req=request(own_id(), key="RSA-3072")).allowed
    assert decide(policy_set, req=request(own_id(), key="RSA-2048")).details["subReason"] == "KEY_NOT_ALLOWED"


def test_ca_validity_caps_not_after() -> None:
    ca = NOW + timedelta(hours=12)
    decision = decide(build(BASELINE), req=request(own_id(), validity=86400), ca=ca)
    assert decision.allowed and decision.duration_seconds == 43200 and decision.not_after == ca
    assert "NOT_AFTER_CAPPED_BY_CA" in decision.flags


def test_ca_validity_deny_and_below_minimum() -> None:
    strict = SETTINGS + "  caValidity: {onExceed: Deny}\n"
    ca = NOW + timedelta(hours=12)
    denied = decide(build(BASELINE, settings=strict), req=request(own_id(), validity=86400), ca=ca)
    assert (denied.reason, denied.outcome) == ("CA_VALIDITY_INSUFFICIENT", Outcome.UNAVAILABLE)
    with_min = BASELINE.replace("{max: 24h, onExceed: Clamp}", "{min: 13h, max: 24h}")
    short = decide(build(with_min), req=request(own_id(), validity=86400), ca=ca)
    assert (short.reason, short.outcome, short.details.get("alert")) == (
        "CA_VALIDITY_INSUFFICIENT",
        Outcome.UNAVAILABLE,
        True,
    )
    expired = decide(build(BASELINE), ca=NOW - timedelta(seconds=1))
    assert expired.reason == "CA_VALIDITY_INSUFFICIENT"


@pytest.mark.parametrize("left", [-1.0, 0.0, 0.5, 0.999, 1.0, 1.5, 59.9, 3600.0])
def test_the_builtin_rule_and_the_engine_cap_at_the_ca_alike(left: float) -> None:
    """One helper for both: with 0.5 s of CA validity left the built-in rule used to ALLOW with duration 0."""
    ca = NOW + timedelta(seconds=left)
    builtin = OwnIdentityOnly(TD, 86400).decide(caller(), request(own_id(), validity=86400), now=NOW, ca_not_after=ca)
    engine = decide(build(BASELINE), req=request(own_id(), validity=86400), ca=ca)

    def shape(d: Decision) -> tuple[object, ...]:
        return d.verdict, d.reason, d.outcome, d.duration_seconds, d.not_after, d.flags

    assert shape(builtin) == shape(engine)
    if left < 1:
        assert (builtin.reason, builtin.outcome) == ("CA_VALIDITY_INSUFFICIENT", Outcome.UNAVAILABLE)
    else:
        assert (
            builtin.allowed and builtin.duration_seconds == int(left) and builtin.flags == ("NOT_AFTER_CAPPED_BY_CA",)
        )
        assert builtin.not_after is not None and builtin.not_after <= ca


def test_istio_compatible_default_grants_own_identity_only() -> None:
    compatible = SETTINGS + "  defaultDecision: IstioCompatible\n"
    policy_set = build(
        policy("nothing", "  subjects: {namespaces: [none]}\n  limits: {duration: {max: 1h}}\n"), settings=compatible
    )
    granted = decide(policy_set, req=request(own_id(), validity=0))
    assert granted.allowed and granted.granted_by == "builtin/own-identity" and granted.duration_seconds == 86400
    other = decide(policy_set, req=request(own_id(service_account="admin")))
    assert other.reason == "NO_MATCHING_RULE" and other.details["closest"] == "builtin/own-identity"
    assert not decide(policy_set, req=request(own_id(), dns=("web.orders.svc",))).allowed


def test_namespace_selector_uses_labels_and_fails_visibly_when_unsynced() -> None:
    selected = policy(
        "tiered",
        "  subjects:\n    namespaceSelector:\n"
        "      matchExpressions: [{key: mesh.example.org/tier, operator: In, values: [gold]}]\n"
        f"  rules:\n    - name: own\n      effect: Allow\n      identities: ['{OWN}']\n",
    )
    policy_set = build(selected)
    assert policy_set.needs_namespace_labels
    gold = {"orders": {"mesh.example.org/tier": "gold"}}
    assert decide(policy_set, labels=gold.get).allowed
    assert decide(policy_set, labels=lambda ns: {}).reason == "NO_MATCHING_RULE"
    unsynced = decide(policy_set, labels=lambda ns: None)
    assert (unsynced.reason, unsynced.outcome) == ("EVALUATION_ERROR", Outcome.UNAVAILABLE)
    assert decide(policy_set, labels=None).reason == "EVALUATION_ERROR"


def test_metadata_name_selector_needs_no_informer() -> None:
    by_name = policy(
        "by-name",
        "  subjects: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: orders}}}\n"
        f"  rules:\n    - name: own\n      effect: Allow\n      identities: ['{OWN}']\n",
    )
    policy_set = build(by_name)
    assert not policy_set.needs_namespace_labels
    assert decide(policy_set).allowed
    assert not decide(policy_set, who=caller("billing"), req=request(own_id("billing"))).allowed


def test_namespace_label_templates_render_trusted_labels() -> None:
    tiered = policy(
        "tier-ids",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: tier\n      effect: Allow\n"
        "      identities: ['spiffe://{trustDomain}/ns/{namespace}/tier/{nsLabel:mesh.example.org/tier}']\n",
    )
    policy_set = build(tiered)
    labels = {"orders": {"mesh.example.org/tier": "gold"}}.get
    assert decide(policy_set, req=request(f"{own_id()[: -len('/sa/web')]}/tier/gold"), labels=labels).allowed
    assert not decide(policy_set, req=request(f"{own_id()[: -len('/sa/web')]}/tier/silver"), labels=labels).allowed
    bad_value = {"orders": {"mesh.example.org/tier": "a/b"}}.get
    assert not decide(policy_set, req=request("spiffe://cluster.local/ns/orders/tier/a/b"), labels=bad_value).allowed


def test_wildcard_dns_names_need_opt_in_and_the_literal_label() -> None:
    body = (
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: wild\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      allowWildcardDNSNames: true\n"
        "      dnsNames: ['*.{namespace}.svc', '{serviceAccount}.{namespace}.svc']\n"
    )
    policy_set = build(policy("wild", body))
    assert decide(policy_set, req=request(own_id(), dns=("*.orders.svc",))).allowed
    assert decide(policy_set, req=request(own_id(), dns=("api.orders.svc",))).allowed
    assert not decide(policy_set, req=request(own_id(), dns=("*.web.orders.svc",))).allowed
    assert not decide(policy_set, req=request(own_id(), dns=("a.b.orders.svc",))).allowed
    assert not decide(policy_set, req=request(own_id(), dns=("API.orders.svc",))).allowed


def test_a_wildcard_name_covering_a_denied_name_is_denied() -> None:
    """A certificate for *.payments.svc is valid for admin.payments.svc, so a Deny rule on that name catches it."""
    wild = policy(
        "team",
        "  subjects: {namespaces: [payments]}\n  rules:\n    - name: wildcard-dns\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      allowWildcardDNSNames: true\n      dnsNames: ['*.{{namespace}}.svc']\n",
    )
    deny = policy(
        "compliance",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: no-admin-dns\n      effect: Deny\n"
        "      dnsNames: ['admin.payments.svc']\n",
    )
    policy_set = build(wild, deny)
    api = caller("payments", "api")
    wildcard = decide(policy_set, who=api, req=request(own_id("payments", "api"), dns=("*.payments.svc",)))
    assert (wildcard.verdict, wildcard.reason) == (Verdict.DENY, "DENIED_BY_RULE")
    assert wildcard.deny_rules == ("compliance/no-admin-dns",)
    # A wildcard one level deeper or in another zone does not cover admin.payments.svc.
    deeper = decide(policy_set, who=api, req=request(own_id("payments", "api"), dns=("*.x.payments.svc",)))
    assert deeper.reason == "NO_MATCHING_RULE"
    assert decide(build(wild), who=api, req=request(own_id("payments", "api"), dns=("*.payments.svc",))).allowed


def test_dns_template_values_fill_one_label_except_the_domains() -> None:
    """Service account "api.payments" in orders must not get api.payments.svc (the payments service's name)."""
    names = (
        "['{serviceAccount}.svc', '{podName}.{namespace}.svc', 'api.{namespace}.svc.{clusterDomain}', "
        "'{nsLabel:mesh.example.org/tier}.tiers.example']"
    )
    grants = policy(
        "dns",
        f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: r\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      dnsNames: {names}\n",
    )
    policy_set = build(grants)

    def ask(who: Caller, name: str, labels: NamespaceLabels | None = None) -> Decision:
        return decide(policy_set, who=who, req=request(who.spiffe_id, dns=(name,)), labels=labels or (lambda ns: {}))

    dotted = ask(caller("orders", "api.payments"), "api.payments.svc")
    assert (dotted.reason, dotted.details["subReason"]) == ("NO_MATCHING_RULE", "DNS_NAME_NOT_ALLOWED")
    assert ask(caller("orders", "api"), "api.svc").allowed
    assert ask(caller("orders", "api"), "api.orders.svc.cluster.local").allowed  # {clusterDomain} spans labels
    assert not ask(caller(pod_name="web.payments"), "web.payments.orders.svc").allowed
    assert ask(caller(pod_name="web-1"), "web-1.orders.svc").allowed
    tier = {"orders": {"mesh.example.org/tier": "gold.silver"}}.get
    assert not ask(caller(), "gold.silver.tiers.example", tier).allowed
    assert ask(caller(), "gold.tiers.example", {"orders": {"mesh.example.org/tier": "gold"}}.get).allowed

    # In a Deny rule a value that cannot be one label makes the rule match (deny when unsure).
    deny = policy(
        "internal", "  rules:\n    - {name: no-internal, effect: Deny, dnsNames: ['{serviceAccount}.internal']}\n"
    )
    with_deny = build(grants, deny)
    refused = decide(with_deny, who=caller("orders", "a.b"), req=request(own_id("orders", "a.b"), dns=("a.b.svc",)))
    assert refused.deny_rules == ("internal/no-internal",)
    assert decide(
        with_deny, who=caller("orders", "api"), req=request(own_id("orders", "api"), dns=("api.svc",))
    ).allowed


def test_deny_rule_conditions_and() -> None:
    deny = policy(
        "denies",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: no-internal-dns\n      effect: Deny\n"
        "      dnsNames: ['*.internal']\n      key: {algorithms: [RSA-2048]}\n",
    )
    dns_rule = BASELINE.replace(
        "      duration:", "      dnsNames: ['{serviceAccount}.internal', '*.svc']\n      duration:"
    )
    policy_set = build(dns_rule, deny)
    both = decide(policy_set, req=request(own_id(), dns=("web.internal",), key="RSA-2048"))
    assert both.reason == "DENIED_BY_RULE" and both.deny_rules == ("denies/no-internal-dns",)
    only_dns = decide(policy_set, req=request(own_id(), dns=("web.internal",)))
    assert only_dns.allowed


def test_all_matching_deny_rules_are_listed_in_policy_name_order() -> None:
    z = policy(
        "z-denies", "  priority: 100\n  subjects: {namespaces: ['*']}\n  rules:\n    - {name: z, effect: Deny}\n"
    )
    a = policy(
        "a-denies", "  subjects: {serviceAccounts: [web]}\n  rules:\n    - {name: a, effect: Deny, message: no web}\n"
    )
    decision = decide(build(BASELINE, z, a))
    assert decision.deny_rules == ("a-denies/a", "z-denies/z")
    assert decision.message == "no web"


def test_disabled_and_expired_policies_do_not_apply() -> None:
    disabled = policy(
        "switched-off", "  mode: Disabled\n  subjects: {namespaces: ['*']}\n  rules:\n    - {name: d, effect: Deny}\n"
    )
    expired = policy(
        "gone",
        "  expiresAt: '2026-05-01T00:00:00Z'\n  ticket: SEC-1\n  subjects: {namespaces: ['*']}\n"
        "  rules:\n    - {name: d, effect: Deny}\n",
    )
    assert decide(build(BASELINE, disabled, expired)).allowed


def test_audit_mode_reports_would_deny_and_would_allow_without_changing_answers() -> None:
    audit_deny = policy(
        "audit-deny", "  mode: Audit\n  subjects: {namespaces: ['*']}\n  rules:\n    - {name: stop, effect: Deny}\n"
    )
    audit_allow = policy(
        "audit-dns",
        "  mode: Audit\n  priority: 5\n  subjects: {namespaces: ['*']}\n"
        "  rules:\n    - name: dns\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      dnsNames: ['{{serviceAccount}}.{{namespace}}.svc']\n",
    )
    policy_set = build(BASELINE, audit_deny, audit_allow)
    granted = decide(policy_set)
    assert granted.allowed
    assert [(f.policy, f.rule, f.finding) for f in granted.audit_findings] == [
        ("audit-deny", "stop", "AUDIT_WOULD_DENY")
    ]
    denied = decide(policy_set, req=request(own_id(), dns=("web.orders.svc",)))
    assert not denied.allowed
    assert ("audit-dns", "dns", "AUDIT_WOULD_ALLOW") in [(f.policy, f.rule, f.finding) for f in denied.audit_findings]


def test_service_accounts_with_a_namespace_and_not_lists() -> None:
    scoped = policy(
        "scoped",
        "  subjects:\n    serviceAccounts: ['orders/*']\n    notServiceAccounts: [admin]\n"
        "    notPrincipals: ['*/ns/*/sa/legacy']\n"
        f"  rules:\n    - name: own\n      effect: Allow\n      identities: ['{OWN}']\n",
    )
    policy_set = build(scoped)
    assert decide(policy_set).allowed
    assert not decide(
        policy_set, who=caller(service_account="admin"), req=request(own_id(service_account="admin"))
    ).allowed
    assert not decide(
        policy_set, who=caller(service_account="legacy"), req=request(own_id(service_account="legacy"))
    ).allowed
    assert not decide(policy_set, who=caller("billing"), req=request(own_id("billing"))).allowed


def test_pod_templates_need_a_pod_bound_token() -> None:
    pods = policy(
        "pods",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: pod\n      effect: Allow\n"
        "      identities: ['spiffe://{trustDomain}/ns/{namespace}/pod/{podName}']\n",
    )
    policy_set = build(pods)
    uri = "spiffe://cluster.local/ns/orders/pod/web-1"
    assert decide(policy_set, who=caller(pod_name="web-1"), req=request(uri)).allowed
    assert not decide(policy_set, req=request(uri)).allowed


def test_a_deny_rule_whose_template_cannot_render_matches() -> None:
    """Deny when unsure: a Deny rule about {podName}, {podUID} or a namespace label the caller lacks still denies;
    an Allow rule in the same position grants nothing."""
    grants = policy(
        "grants",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: own\n      effect: Allow\n"
        f"      identities: ['{OWN}', '{OWN}/pod/*']\n      dnsNames: ['*.orders.svc']\n",
    )
    denies = policy(
        "denies",
        "  subjects: {namespaces: ['*']}\n  rules:\n"
        f"    - {{name: no-pod, effect: Deny, identities: ['{OWN}/pod/{{podName}}']}}\n"
        f"    - {{name: no-uid, effect: Deny, identities: ['{OWN}/pod/{{podUID}}-x']}}\n"
        f"    - {{name: no-tier, effect: Deny, identities: ['{OWN}/pod/{{nsLabel:mesh.example.org/tier}}']}}\n"
        "    - {name: no-pod-dns, effect: Deny, dnsNames: ['{podName}.orders.svc']}\n",
    )
    policy_set = build(grants, denies)
    tier = {"orders": {"mesh.example.org/tier": "gold"}}.get
    pod = own_id() + "/pod/web-1"
    with_pod = caller(pod_name="web-1", pod_uid="u1")

    no_token = decide(policy_set, req=request(pod), labels=tier)
    assert no_token.deny_rules == ("denies/no-pod", "denies/no-uid")
    no_label = decide(policy_set, who=with_pod, req=request(pod), labels=lambda ns: {})
    assert no_label.deny_rules == ("denies/no-pod", "denies/no-tier")
    # Unrenderable, the template covers every requested value of its kind, not only ones shaped like it.
    dns = decide(policy_set, who=caller(pod_uid="u1"), req=request(own_id(), dns=("api.orders.svc",)), labels=tier)
    assert dns.deny_rules == ("denies/no-pod", "denies/no-pod-dns")
    # Everything renders and nothing is covered: no Deny rule matches.
    other_pod = decide(policy_set, who=with_pod, req=request(own_id() + "/pod/web-2"), labels=tier)
    assert other_pod.allowed
    assert decide(policy_set, who=with_pod, req=request(own_id(), dns=("api.orders.svc",)), labels=tier).allowed
    # A rule about DNS names needs a requested name to match at all.
    dns_only = build(
        grants, policy("dns", "  rules:\n    - {name: d, effect: Deny, dnsNames: ['{podName}.orders.svc']}\n")
    )
    assert decide(dns_only, req=request(own_id())).allowed
    assert decide(dns_only, req=request(own_id(), dns=("x.orders.svc",))).deny_rules == ("dns/d",)

    # Allow rules keep "no match" when a value is missing.
    pods = policy(
        "pods",
        "  subjects: {namespaces: ['*']}\n  rules:\n"
        "    - {name: pod, effect: Allow, identities: ['spiffe://{trustDomain}/ns/{namespace}/pod/{podName}']}\n"
        "    - {name: tier, effect: Allow, identities: ['spiffe://{trustDomain}/ns/{namespace}/t/{nsLabel:mesh.example.org/tier}']}\n",
    )
    assert (
        decide(build(pods), req=request("spiffe://cluster.local/ns/orders/pod/web-1"), labels=tier).reason
        == "NO_MATCHING_RULE"
    )
    missing = decide(build(pods), req=request("spiffe://cluster.local/ns/orders/t/gold"), labels=lambda ns: {})
    assert missing.reason == "NO_MATCHING_RULE"


def test_usages_must_be_a_subset() -> None:
    policy_set = build(BASELINE)
    ok = IssuanceRequest(uris=(own_id(),), validity_seconds=3600, usages=("digitalSignature", "serverAuth"))
    assert decide(policy_set, req=ok).allowed
    signing = IssuanceRequest(uris=(own_id(),), validity_seconds=3600, usages=("codeSigning",))
    assert decide(policy_set, req=signing).details["subReason"] == "USAGE_NOT_ALLOWED"


def test_impersonation_by_a_listed_node_account(reference_set: PolicySet) -> None:
    ztunnel = caller(node_principal="istio-system/ztunnel")
    assert decide(reference_set, who=ztunnel).allowed
    spoof = decide(reference_set, who=caller(node_principal="orders/other"))
    assert (spoof.reason, spoof.outcome) == ("IMPERSONATION_NOT_ALLOWED", Outcome.PERMISSION_DENIED)
    assert decide(reference_set, who=caller(node_principal="orders/web")).allowed  # its own identity


def test_unknown_caller_gets_a_clear_no_applicable_rule(reference_set: PolicySet) -> None:
    decision = decide(reference_set, who=caller("kube-public", "x"), req=request(own_id("kube-public", "x")))
    assert decision.allowed  # the baseline applies everywhere but kube-system
    outside = build(
        policy(
            "only-a",
            f"  subjects: {{namespaces: [a]}}\n  rules:\n    - {{name: own, effect: Allow, identities: ['{OWN}']}}\n",
        )
    )
    decision = decide(outside)
    assert decision.reason == "NO_MATCHING_RULE" and decision.details["subReason"] == "NO_APPLICABLE_RULE"
    assert "orders/web" in decision.message


def test_decision_record_is_json_and_complete(reference_set: PolicySet) -> None:
    req = request(own_id(), validity=86400)
    decision = decide(reference_set, req=req)
    record = decision_record("d-1", caller(), req, decision, at=NOW)
    assert json.loads(json.dumps(record)) == record
    assert record["decisionId"] == "d-1" and record["decision"] == "Allow" and record["reason"] == "GRANTED"
    assert record["grantedBy"] == "mesh-baseline/own-identity"
    assert record["issued"] == {
        "uris": [own_id()],
        "dnsNames": [],
        "durationSeconds": 86400,
        "notAfter": "2026-06-02T00:00:00+00:00",
    }
    assert record["limitsApplied"] == ["mesh-baseline/limits"]
    assert record["auditFindings"][0]["finding"] == "AUDIT_WOULD_CLAMP"
    assert record["policySetRevision"] == reference_set.revision
    assert record["caller"]["principal"] == "cluster.local/ns/orders/sa/web"


def test_refusals_carry_the_revision_they_were_decided_against(reference_set: PolicySet) -> None:
    refused = deny(Outcome.UNAVAILABLE, "CA_VALIDITY_INSUFFICIENT", "m", revision="sha256:abc", alert=True)
    assert (refused.policy_set_revision, refused.details) == ("sha256:abc", {"alert": True})
    step0 = [
        decide(reference_set, req=request(own_id() + "/")),  # INVALID_SPIFFE_ID
        decide(reference_set, req=IssuanceRequest(uris=(own_id(),), common_name="web")),  # SAN_TYPE_NOT_ALLOWED
        decide(reference_set, who=caller(node_principal="orders/other")),  # IMPERSONATION_NOT_ALLOWED
        decide(reference_set, req=request(own_id(), own_id())),  # TOO_MANY_URI_SANS
    ]
    assert [d.reason for d in step0] == [
        "INVALID_SPIFFE_ID",
        "SAN_TYPE_NOT_ALLOWED",
        "IMPERSONATION_NOT_ALLOWED",
        "TOO_MANY_URI_SANS",
    ]
    assert {d.policy_set_revision for d in step0} == {reference_set.revision}
    expired_ca = decide(reference_set, ca=NOW - timedelta(seconds=1))
    assert (expired_ca.reason, expired_ca.policy_set_revision) == ("CA_VALIDITY_INSUFFICIENT", reference_set.revision)


def test_client_messages(reference_set: PolicySet) -> None:
    denied = decide(reference_set, who=caller("prod-x", "default"), req=request(own_id("prod-x", "default")))
    detailed = client_message(denied)
    assert detailed.startswith("denied: DENIED_BY_RULE: Workloads in prod-* namespaces")
    assert "[compliance-denies/no-default-sa-in-prod]" in detailed
    assert detailed.endswith(f"(policy set {reference_set.short_revision})")
    assert client_message(denied, minimal=True) == "denied: DENIED_BY_RULE"


@pytest.mark.parametrize("validity", [2**63 - 1, 10**12])
def test_huge_durations_are_clamped_without_overflow(reference_set: PolicySet, validity: int) -> None:
    decision = decide(reference_set, req=request(own_id(), validity=validity))
    assert decision.allowed and decision.duration_seconds == 86400


def test_derived_decisions_copy_every_other_field_and_leave_the_original_alone() -> None:
    """with_audit_findings/with_details build a new Decision field by field; a field they forget would vanish."""
    from dataclasses import fields, replace
    from datetime import UTC, datetime

    from policies.decider import AuditFinding

    full = Decision(
        Verdict.ALLOW, Outcome.OK, "GRANTED", "granted by a/b", uris=("spiffe://td/ns/a/sa/b",), dns_names=("b.a",),
        duration_seconds=60, not_after=datetime(2026, 1, 1, tzinfo=UTC), granted_by="a/b",
        flags=("DURATION_CLAMPED",), deny_rules=("a/d",), limits_applied=("a/limits",),
        audit_findings=(AuditFinding("x", None, "AUDIT_WOULD_DENY"),), policy_set_revision="sha256:1",
        details={"matched": "a/b"},
    )  # fmt: skip
    defaults = Decision(Verdict.DENY, Outcome.UNAVAILABLE, "", "")
    assert all(getattr(full, f.name) != getattr(defaults, f.name) for f in fields(Decision)), "set every field"
    finding = (AuditFinding("y", "r", "AUDIT_WOULD_CLAMP", "m"),)
    assert full.with_audit_findings(finding) == replace(full, audit_findings=finding)
    assert full.with_details(clientMessage="denied") == replace(
        full, details={"matched": "a/b", "clientMessage": "denied"}
    )
    assert full.details == {"matched": "a/b"} and full.audit_findings[0].policy == "x"
