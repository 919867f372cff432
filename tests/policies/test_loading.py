"""The strict schema and the semantic checks: every error located as file:line:col: field.path: message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import yaml_source
from policies.loader import build_policy_set, load_policy_set
from policies.problems import PolicySetInvalid, Severity

from .conftest import SECTION_2_1, SETTINGS, TD, build, policy

OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def errors_of(*documents: str, settings: str = SETTINGS) -> list[str]:
    with pytest.raises(PolicySetInvalid) as caught:
        build(*documents, settings=settings)
    return [str(p) for p in caught.value.errors]


def warnings_of(*documents: str) -> list[str]:
    return [str(w) for w in build(*documents).warnings if w.severity is Severity.WARNING]


def test_reference_documents_load_cleanly() -> None:
    policy_set = load_policy_set([SECTION_2_1], trust_domain=TD)
    assert [p.name for p in policy_set.policies] == [
        "payments-services",
        "compliance-denies",
        "mesh-baseline",
        "tighten-to-12h",
    ]
    assert policy_set.rule_count == 7
    assert not policy_set.warnings
    assert policy_set.revision.startswith("sha256:") and len(policy_set.revision) == 71


def test_unknown_field_is_located_with_a_suggestion() -> None:
    text = policy(
        "p", "  subjects: {namespaces: ['*']}\n  rules:\n    - name: r\n      effect: Allow\n      identitees: []\n"
    )
    assert errors_of(text) == [
        "doc0.yaml:9:7: spec.rules[0].identitees: unknown field 'identitees' (did you mean 'identities'?)"
    ]


def test_every_error_of_every_document_is_reported_at_once() -> None:
    first = policy("a", "  mode: Enforced\n  subjects: {namespaces: ['*']}\n")
    second = policy("b", "  priority: high\n  subjects: {namespaces: ['*']}\n")
    found = errors_of(first, second)
    assert "doc0.yaml:5:9: spec.mode: must be one of Enforce, Audit, Disabled, got 'Enforced'" in found
    assert "doc1.yaml:5:13: spec.priority: must be an integer, got a string" in found


def test_yaml_syntax_error_is_located() -> None:
    found = errors_of("apiVersion: meshsigner.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: x\n")
    assert len(found) == 1 and found[0].startswith("doc0.yaml:4:1: invalid YAML")


def test_duplicate_keys_are_rejected() -> None:
    text = policy("p", "  subjects: {namespaces: ['*']}\n  mode: Audit\n  mode: Enforce\n")
    assert "doc0.yaml:7:3: spec.mode: duplicate key" in errors_of(text)


def test_tagged_or_non_string_keys_are_not_field_names() -> None:
    """'!x mode: Audit' used to be read as the field 'mode' (the key's tag was never checked)."""
    assert errors_of(policy("p", "  subjects: {namespaces: ['*']}\n  !x mode: Audit\n")) == [
        "doc0.yaml:6:3: spec.mode: field names must be plain strings, got a !x value"
    ]
    assert errors_of(policy("p", "  subjects: {namespaces: ['*']}\n  1: Audit\n")) == [
        "doc0.yaml:6:3: spec.1: field names must be plain strings, got an integer"
    ]
    assert (
        build(policy("p", "  subjects: {namespaces: ['*']}\n  !!str mode: Audit\n")).policies[0].mode.value == "Audit"
    )


@pytest.mark.parametrize("loader", ["SafeLoader", "CSafeLoader"])
def test_both_yaml_parsers_give_the_same_set_and_reject_tagged_keys(
    loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libyaml parses a large set about 5x faster; PyYAML is the fallback. Both must mean the same thing."""
    if not hasattr(yaml, loader):
        pytest.skip(f"PyYAML was built without {loader}")
    monkeypatch.setattr(yaml_source, "YAML_LOADER", getattr(yaml, loader))
    expected = load_policy_set([SECTION_2_1], trust_domain=TD).revision
    sources = [(path.name, path.read_text()) for path in sorted(SECTION_2_1.glob("*.yaml"))]
    assert build_policy_set(sources, trust_domain=TD).revision == expected
    # The two parsers tokenise an odd tag differently ("!?10m, max" vs "!?10m"); neither may yield a field.
    tagged = policy("p", "  subjects: {namespaces: ['*']}\n  limits: {duration: {!?10m, max: 1h}}\n")
    (found,) = errors_of(tagged)
    assert found.startswith("doc0.yaml:6:") and "field names must be plain strings" in found


def test_libyaml_is_used_when_pyyaml_has_it() -> None:
    assert yaml_source.YAML_LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def test_unquoted_yaml_booleans_are_not_strings() -> None:
    text = policy("p", "  subjects: {namespaces: [no]}\n")
    assert errors_of(text) == [
        "doc0.yaml:5:27: spec.subjects.namespaces[0]: must be a string, got a boolean (quote it)"
    ]


@pytest.mark.parametrize("name", ["builtin", "settings"])
def test_reserved_policy_names(name: str) -> None:
    """builtin/own-identity and the settings ceiling are reported under these names; a policy may not take them."""
    text = policy(name, "  subjects: {namespaces: ['*']}\n  limits: {duration: {max: 1h}}\n")
    (found,) = errors_of(text)
    assert found.startswith(f"doc0.yaml:3:12: metadata.name: '{name}' is reserved")
    assert build(policy(f"{name}-team", "  subjects: {namespaces: ['*']}\n")).policies[0].name == f"{name}-team"


def test_duplicate_policy_and_rule_names() -> None:
    rule = f"    - name: r\n      effect: Allow\n      identities: ['{OWN}']\n"
    text = policy("p", f"  subjects: {{namespaces: ['*']}}\n  rules:\n{rule}{rule}")
    found = errors_of(text, text)
    assert any("spec.rules[1].name: duplicate rule name 'r'" in e for e in found)
    assert any(
        "doc1.yaml" in e and "metadata.name: duplicate policy name 'p' (first in doc0.yaml#0)" in e for e in found
    )


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        (
            "{min: 2h, max: 1h}",
            "spec.rules[0].duration.min: 2h exceeds spec.rules[0].duration.max 1h: the range is empty",
        ),
        ("{max: 30d}", "spec.rules[0].duration.max: 30d exceeds settings.duration.max 7d"),
        ("{default: 2h, max: 1h}", "spec.rules[0].duration.default: 2h exceeds spec.rules[0].duration.max 1h"),
        ("{default: 5m, min: 10m}", "spec.rules[0].duration.default: 5m is below spec.rules[0].duration.min 10m"),
        ("{max: 1500ms}", "spec.rules[0].duration.max: duration '1500ms' is not a whole number of seconds"),
        ("{max: 1y}", "spec.rules[0].duration.max: invalid duration '1y'"),
    ],
)
def test_v31_duration_ranges_are_checked_at_load(duration: str, message: str) -> None:
    text = policy(
        "p",
        f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: r\n      effect: Allow\n"
        f"      identities: ['{OWN}']\n      duration: {duration}\n",
    )
    found = errors_of(text)
    assert any(message in e for e in found), found
    assert all(e.startswith("doc0.yaml:10:") for e in found)


def test_durations_longer_than_ten_years_are_located_load_errors() -> None:
    """4000000d used to load and raise OverflowError while deciding (now + duration)."""
    found = errors_of(settings=SETTINGS + "  duration: {max: 4000000d, default: 4000000d}\n")
    assert found == [
        "settings.yaml:10:19: spec.duration.max: 4000000d exceeds the longest supported duration 3650d (10 years)",
        "settings.yaml:10:38: spec.duration.default: 4000000d exceeds the longest supported duration 3650d (10 years)",
    ]
    huge = "9" * 400 + "s"
    text = policy("p", f"  subjects: {{namespaces: ['*']}}\n  limits: {{duration: {{max: {huge}}}}}\n")
    (too_long,) = errors_of(text)
    assert too_long.startswith("doc0.yaml:6:28: spec.limits.duration.max: duration '999") and "is too long" in too_long
    assert build(settings=SETTINGS + "  duration: {max: 3650d, default: 3650d}\n").settings.duration_max == 315360000


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ("spiffe://{trustDomain}/ns/{namespace}/sa/{sa}", "unknown variable {sa}"),
        ("spiffe://{trustDomain}/ns/{namespace}/../x", 'can never render a valid SPIFFE ID: path segment ".."'),
        ("spiffe://{trustDomain}/ns/{namespace}/sa/", "can never render a valid SPIFFE ID"),
        ("spiffe://{trustDomain}/ns/**/{namespace}", '"**" may only be the whole last path segment'),
        ("https://{trustDomain}/ns/{namespace}", 'must start with "spiffe://"'),
        ("spiffe://{trustDomain}/ns/{nsLabel:team}", "label key 'team' is not in settings.trustedNamespaceLabelKeys"),
        ("spiffe://evil.example/ns/{namespace}/sa/x", "trust domain 'evil.example' is not in this rule's trustDomains"),
        ("spiffe://{trustDomain}/gateway", "grants identities outside the caller's namespace"),
        ("spiffe://{trustDomain}/{namespace}/**", "the path must start with ns/{namespace}"),
        ("spiffe://{trustDomain}/ns/x/sa/ns/{namespace}", "the path must start with ns/{namespace}"),
        ("spiffe://{trustDomain}/x/{namespace}/sa/{serviceAccount}", "the path must start with ns/{namespace}"),
        ("spiffe://{trustDomain}/ns/{namespace}*/sa/{serviceAccount}", "{namespace} shares a path segment with *"),
        ("spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}*", "{serviceAccount} shares a path segment"),
        ("spiffe://{trustDomain}/ns/{namespace}/sa/*-{serviceAccount}", "{serviceAccount} shares a path segment"),
    ],
)
def test_templates_must_render_valid_ids(identity: str, message: str) -> None:
    text = policy(
        "p",
        f"  subjects: {{namespaces: ['*']}}\n  rules:\n    - name: r\n      effect: Allow\n"
        f"      identities: ['{identity}']\n",
    )
    found = errors_of(text)
    assert any(message in e and "spec.rules[0].identities[0]" in e for e in found), found


def test_namespace_must_be_pinned_by_a_leading_ns_segment() -> None:
    """{namespace} somewhere in the path is not enough: the reviewer's two templates granted other namespaces."""
    rules = (
        "    - name: ns-subtree\n      effect: Allow\n      identities: ['spiffe://{trustDomain}/{namespace}/**']\n"
        "    - name: prefix\n      effect: Allow\n"
        "      identities: ['spiffe://{trustDomain}/ns/{namespace}*/sa/{serviceAccount}']\n"
    )
    found = errors_of(policy("subtree", f"  subjects: {{namespaces: ['*']}}\n  rules:\n{rules}"))
    assert any(e.startswith("doc0.yaml:9:20: spec.rules[0].identities[0]: grants identities outside") for e in found)
    assert any(e.startswith("doc0.yaml:12:20: spec.rules[1].identities[0]: {namespace} shares") for e in found)
    pinned = (
        "    - name: own\n      effect: Allow\n      identities:\n"
        "        - 'spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}/shard/*'\n"
        "        - 'spiffe://{trustDomain}/ns/{namespace}/**'\n"
        "    - name: deny-prefix\n      effect: Deny\n      identities: ['spiffe://{trustDomain}/ns/{namespace}*/**']\n"
    )
    assert build(policy("pinned", f"  subjects: {{namespaces: ['*']}}\n  rules:\n{pinned}")).rule_count == 2
    opted_in = rules.replace("effect: Allow\n", "effect: Allow\n      allowCrossNamespace: true\n", 1)
    found = errors_of(policy("subtree", f"  subjects: {{namespaces: ['*']}}\n  rules:\n{opted_in}"))
    assert not any("spec.rules[0]" in e for e in found), found


def test_cross_namespace_grants_need_the_opt_in() -> None:
    text = policy(
        "p",
        "  subjects: {namespaces: [gw]}\n  rules:\n    - name: r\n      effect: Allow\n"
        "      allowCrossNamespace: true\n      identities: ['spiffe://{trustDomain}/gateway/**']\n",
    )
    assert build(text).rule_count == 1


@pytest.mark.parametrize(
    ("principal", "hint"),
    [
        ("cluster.local/ns/payments/*", 'did you mean "cluster.local/ns/payments/sa/*"?'),
        ("*", 'use "*/ns/*/sa/*" for every principal'),
        ("cluster.local/ns/a/svc/b", ""),
    ],
)
def test_principals_that_cannot_match_five_segments_are_rejected(principal: str, hint: str) -> None:
    text = policy("p", f"  subjects: {{principals: ['{principal}']}}\n")
    (found,) = errors_of(text)
    assert found.startswith("doc0.yaml:5:") and "can never match a principal" in found and hint in found


def test_alias_opt_in_must_name_a_configured_alias() -> None:
    text = policy(
        "p",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: r\n      effect: Allow\n"
        "      trustDomains: [other.local]\n      identities: ['spiffe://other.local/ns/{namespace}/sa/x']\n",
    )
    assert any("neither the primary trust domain nor in settings.trustDomainAliases" in e for e in errors_of(text))


def test_selector_label_keys_must_be_trusted() -> None:
    text = policy("p", "  subjects: {namespaceSelector: {matchLabels: {team: a}}}\n")
    assert errors_of(text) == [
        "doc0.yaml:5:48: spec.subjects.namespaceSelector.matchLabels['team']: "
        "label key 'team' is not in settings.trustedNamespaceLabelKeys"
    ]


def test_allow_only_fields_on_deny_rules_are_rejected() -> None:
    text = policy(
        "p",
        "  subjects: {namespaces: ['*']}\n  rules:\n    - name: r\n      effect: Deny\n"
        "      duration: {max: 1h}\n      when: ['true']\n",
    )
    found = errors_of(text)
    assert any("spec.rules[0].duration: only Allow rules take this field" in e for e in found)
    assert not any("when" in e for e in found)


def test_settings_must_be_unique_and_match_the_server_trust_domain() -> None:
    other = SETTINGS.replace("cluster.local", "other.example").replace("name: settings", "name: second")
    with pytest.raises(PolicySetInvalid) as caught:
        build_policy_set([("a.yaml", SETTINGS), ("b.yaml", other)], trust_domain=TD)
    found = [str(p) for p in caught.value.errors]
    assert any(e.startswith("b.yaml:") and "one PolicySettings document" in e for e in found)
    with pytest.raises(PolicySetInvalid) as caught:
        build_policy_set([("b.yaml", other)], trust_domain=TD)
    assert "differs from the server's trust domain 'cluster.local'" in str(caught.value.errors[0])


def test_empty_input_is_not_a_valid_set(tmp_path: Path) -> None:
    with pytest.raises(PolicySetInvalid, match=r"no \*.yaml or \*.yml policy files found"):
        load_policy_set([tmp_path])
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(PolicySetInvalid, match="no PolicySettings or IdentityPolicy documents"):
        load_policy_set([tmp_path])


def test_warnings_do_not_reject_the_set() -> None:
    rule = f"    - name: r\n      effect: Allow\n      identities: ['{OWN}']\n"
    copy = rule.replace("name: r", "name: r2")
    unreachable = "    - name: never\n      effect: Deny\n      subjects: {namespaces: [b]}\n"
    text = policy("p", f"  subjects: {{namespaces: [a]}}\n  rules:\n{rule}{copy}{unreachable}")
    found = warnings_of(text, policy("nosubjects", "  limits: {duration: {min: 2h, max: 1h}}\n"))
    assert any("spec.rules[1]: warning: repeats rule 'r' exactly" in w for w in found)
    assert any("spec.rules[2].subjects.namespaces: warning: can never apply" in w for w in found)
    assert any("doc1.yaml" in w and "no subjects" in w for w in found)
    assert any("DURATION_RANGE_EMPTY" in w for w in found)


def test_revision_ignores_order_comments_and_file_names() -> None:
    a = policy("a", "  subjects: {namespaces: ['*']}\n  limits: {duration: {max: 1h}}\n")
    b = policy("b", "  subjects: {namespaces: ['*']}\n  limits: {duration: {max: 2h}}\n")
    first = build(a, b)
    second = build_policy_set([("z.yaml", "# comment\n" + b), ("y.yaml", a), ("s.yaml", SETTINGS)], trust_domain=TD)
    changed = build(a, b.replace("2h", "3h"))
    assert first.revision == second.revision
    assert first.revision != changed.revision


def test_policy_test_documents_in_a_policy_directory_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(SETTINGS)
    (tmp_path / "tests.yaml").write_text(
        "apiVersion: meshsigner.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\nspec: {policies: ['*.yaml']}\n"
    )
    assert load_policy_set([tmp_path], trust_domain=TD).policies == ()


_REFERENCE_TEXT = (SECTION_2_1 / "payments-services.yaml").read_text()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda position, junk, cut: _REFERENCE_TEXT[:position] + junk + _REFERENCE_TEXT[position + cut :],
            st.integers(0, len(_REFERENCE_TEXT)),
            st.text(st.sampled_from(list("{}[]:-,'*&!|>\n #?%@`0aZ.\"")), max_size=6),
            st.integers(0, 5),
        ),
    )
)
def test_any_text_either_loads_or_is_rejected_with_located_problems(text: str) -> None:
    try:
        build_policy_set([("f.yaml", text)], trust_domain=TD)
    except PolicySetInvalid as exc:
        assert exc.errors and all(p.file == "f.yaml" and p.line >= 1 and p.column >= 1 for p in exc.errors)
