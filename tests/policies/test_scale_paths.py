"""The shortcuts that keep large sets cheap must answer exactly what the plain paths answer.

Decisions through the subject index against decisions over a full scan of every policy; step 1's per-entry flags
against a step 1 that checks every policy each time; the one-match SPIFFE ID parser against the step-by-step one;
YAML scalar tags resolved once per load against PyYAML's resolver; load-time template checks worked out once
against the same checks worked out on use; and the load's pause of the garbage collector.
"""

from __future__ import annotations

import gc
import string
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.compiled import Mode
from policies.context import EvaluationContext, LabelsUnavailable
from policies.decider import Caller, Decision, IssuanceRequest
from policies.evaluator import evaluate, prepare, select
from policies.loader import build_policy_set, collection_paused
from policies.policy_set import PolicySet, scan_applicable
from policies.spiffe import InvalidSpiffeID, SpiffeID, _parse_explaining, parse_spiffe_id
from policies.templates import IdentityTemplate, TemplateError
from policies.yaml_source import parse_documents

from .conftest import CA_NOT_AFTER, NOW, SECTION_2_1, SETTINGS, TD

NAMESPACES = ["orders", "payments", "payments-eu", "team-1", "team-1-canary", "kube-system", "prod-a"]
ACCOUNTS = ["web", "api", "worker-batch", "legacy-etl", "default", "debug-x"]
NAME_GLOBS = ["*", "orders", "payments", "payments-*", "*-eu", "team-1*", "prod-*"]
ACCOUNT_GLOBS = ["*", "web", "api", "worker-*", "legacy-*", "*-x"]
OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
TIER = "mesh.example.org/tier"


def labels_of(namespace: str) -> dict[str, str] | None:
    """The label informer of these tests: prod-* and payments* are tier=prod, kube-system is not synced."""
    if namespace == "kube-system":
        return None
    return {TIER: "prod" if namespace.startswith(("prod-", "payments")) else "dev"}


@st.composite
def subject_blocks(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {}
    if draw(st.booleans()):
        block["namespaces"] = draw(st.lists(st.sampled_from(NAME_GLOBS), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        block["notNamespaces"] = draw(st.lists(st.sampled_from(NAME_GLOBS), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        accounts = st.one_of(
            st.sampled_from(ACCOUNT_GLOBS),
            st.builds(lambda n, a: f"{n}/{a}", st.sampled_from(NAME_GLOBS), st.sampled_from(ACCOUNT_GLOBS)),
        )
        block["serviceAccounts"] = draw(st.lists(accounts, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        namespace, account = draw(st.sampled_from(NAME_GLOBS)), draw(st.sampled_from(ACCOUNT_GLOBS))
        block["principals"] = [f"{TD}/ns/{namespace}/sa/{account}"]
    if draw(st.integers(0, 3)) == 0:
        block["namespaceSelector"] = {"matchLabels": {TIER: draw(st.sampled_from(["prod", "dev"]))}}
    return block or {"namespaces": ["*"]}


@st.composite
def policy_documents(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A policy of up to 12 rules (some past the size from which a policy's rules get an index of their own),
    with selectors, expiries, limits, Audit and Disabled modes mixed in."""
    rules = []
    for number in range(draw(st.integers(0, 12))):
        rule: dict[str, Any] = {"name": f"r{number}"}
        kind = draw(st.integers(0, 3))
        if kind == 0:
            rule.update(effect="Allow", identities=[OWN])
        elif kind == 1:
            rule.update(effect="Allow", identities=[OWN], dnsNames=["{serviceAccount}.{namespace}.svc"])
        elif kind == 2:
            rule.update(effect="Deny", dnsNames=["*.internal"])
        else:
            rule.update(effect="Deny")
        if draw(st.integers(0, 2)) > 0:
            rule["subjects"] = draw(subject_blocks())
        if draw(st.integers(0, 5)) == 0:
            rule.update(expiresAt=draw(st.sampled_from(["2026-05-01T00:00:00Z", "2026-07-01T00:00:00Z"])), ticket="T")
        rules.append(rule)
    spec: dict[str, Any] = {
        "mode": draw(st.sampled_from(["Enforce", "Enforce", "Enforce", "Audit", "Disabled"])),
        "priority": draw(st.integers(0, 3)),
        "subjects": draw(subject_blocks()),
    }
    if draw(st.booleans()):
        spec["limits"] = {"duration": {"max": draw(st.sampled_from(["1h", "12h", "24h"]))}}
    if draw(st.integers(0, 4)) == 0:
        spec.update(expiresAt=draw(st.sampled_from(["2026-05-01T00:00:00Z", "2026-07-01T00:00:00Z"])), ticket="T")
    if rules:
        spec["rules"] = rules
    elif "limits" not in spec:
        spec["limits"] = {"duration": {"max": "24h"}}
    return {
        "apiVersion": "meshsigner.io/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": f"p{index}"},
        "spec": spec,
    }


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    documents = [draw(policy_documents(index)) for index in range(draw(st.integers(1, 10)))]
    sources = [("settings.yaml", SETTINGS)]
    sources += [(f"p{i}.yaml", yaml.safe_dump(document)) for i, document in enumerate(documents)]
    return build_policy_set(sources, trust_domain=TD)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Caller, IssuanceRequest]:
    caller = Caller(TD, draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(ACCOUNTS)))
    dns = draw(st.sampled_from([(), (f"{caller.service_account}.{caller.namespace}.svc",), ("db.internal",)]))
    validity = draw(st.sampled_from([0, 600, 3600, 86400, 7 * 86400]))
    return caller, IssuanceRequest(uris=(caller.spiffe_id,), dns_names=dns, validity_seconds=validity)


class FullScanSet(PolicySet):
    """The same set answering step 1 by testing every policy and rule: what the index must reproduce."""

    def applicable(self, ctx: EvaluationContext) -> Any:
        return scan_applicable(self.policies, ctx)


def full_scan_copy(policy_set: PolicySet) -> FullScanSet:
    return FullScanSet(policy_set.settings, policy_set.policies, revision=policy_set.revision)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_set=policy_sets(), inputs=st.lists(requests(), min_size=1, max_size=8))
def test_indexed_decisions_equal_full_scan_decisions(
    policy_set: PolicySet, inputs: list[tuple[Caller, IssuanceRequest]]
) -> None:
    """The index (and the per-caller cache behind it) never skips a policy or rule that can match: every decision,
    audit findings included, is the one a scan of every policy gives."""
    scanned = full_scan_copy(policy_set)
    for caller, request in inputs * 2:  # twice: the second pass answers from the per-caller cache
        indexed = evaluate(policy_set, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER, namespace_labels=labels_of)
        reference = evaluate(scanned, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER, namespace_labels=labels_of)
        assert indexed == reference, (caller, request)


def reference_select(policy_set: PolicySet, ctx: EvaluationContext) -> tuple[list[str], list[str], list[str]]:
    """Step 1 as the guide states it, every policy checked for expiry and selector on every request: the names of
    the enforced and the audited policies, and of the audited ones whose labels were not available."""
    enforced: list[str] = []
    audited: list[str] = []
    errors: list[str] = []
    for entry in scan_applicable(policy_set.policies, ctx):
        policy = entry.policy
        if policy.expires_at is not None and ctx.now >= policy.expires_at:
            continue
        if policy.mode is Mode.ENFORCE:
            if policy.subjects.dynamic_matches(ctx):
                enforced.append(policy.name)
            continue
        try:
            if policy.subjects.dynamic_matches(ctx):
                audited.append(policy.name)
        except LabelsUnavailable:
            errors.append(policy.name)
    return enforced, audited, errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_set=policy_sets(),
    inputs=st.lists(requests(), min_size=1, max_size=6),
    later=st.sampled_from([timedelta(0), timedelta(days=45)]),
)
def test_step_1_skips_only_checks_that_cannot_change_its_answer(
    policy_set: PolicySet, inputs: list[tuple[Caller, IssuanceRequest]], later: timedelta
) -> None:
    """Entries without expiry or selector are taken without a per-decision check; the selection is the same."""
    for caller, request in inputs:
        ctx = prepare(policy_set, caller, request, now=NOW + later, ca_not_after=None, namespace_labels=labels_of)
        assert not isinstance(ctx, Decision)
        try:
            expected = reference_select(policy_set, ctx)
        except LabelsUnavailable:
            with pytest.raises(LabelsUnavailable):
                select(policy_set, ctx)
            continue
        got = select(policy_set, ctx)
        assert [e.policy.name for e in got.enforced] == expected[0]
        assert [e.policy.name for e in got.audited] == expected[1]
        assert [f.policy for f in got.audit_errors] == expected[2]


SPIFFE_ALPHABET = string.ascii_letters + string.digits + "._-/:@?#%" + "é\x00 "


@settings(max_examples=2000, deadline=None)
@given(
    text=st.one_of(
        st.text(SPIFFE_ALPHABET, max_size=40).map(lambda rest: "spiffe://" + rest),
        st.text(SPIFFE_ALPHABET, max_size=40),
        st.lists(st.sampled_from(["ns", "a", ".", "..", "", "A-b_c.d", "x" * 300]), max_size=10).map(
            lambda parts: "spiffe://cluster.local/" + "/".join(parts)
        ),
    )
)
@example(text="spiffe://" + "a" * 2030 + "/b")
@example(text="spiffe://" + "a" * 2040 + "/b")
@example(text="spiffe://a..b/x")
@example(text="spiffe://.a/x")
@example(text="spiffe://td")
def test_the_one_match_spiffe_parser_accepts_exactly_what_the_step_by_step_parser_accepts(text: str) -> None:
    def outcome(parse: Any) -> SpiffeID | str:
        try:
            parsed: SpiffeID = parse(text)
        except InvalidSpiffeID as exc:
            return f"refused: {exc}"
        return parsed

    assert outcome(parse_spiffe_id) == outcome(_parse_explaining)


SCALARS = [
    "a",
    "1",
    "0x1f",
    "1.5",
    ".inf",
    "true",
    "no",
    "Yes",
    "null",
    "~",
    "",
    "2026-01-01",
    "2026-01-01T00:00:00Z",
    "'1'",
    '"true"',
    "24h",
    "-3",
    "=",
    "<<",
]


def tags(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return (node.tag, node.value, node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.SequenceNode):
        return (node.tag, [tags(child) for child in node.value])
    return (node.tag, [(tags(key), tags(value)) for key, value in node.value])


@pytest.mark.parametrize("loader", ["SafeLoader", "CSafeLoader"])
def test_scalar_tags_resolved_once_per_load_are_the_tags_pyyaml_resolves(
    loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(yaml, loader):
        pytest.skip(f"PyYAML was built without {loader}")
    from policies import yaml_source

    monkeypatch.setattr(yaml_source, "YAML_LOADER", getattr(yaml, loader))
    texts = [path.read_text() for path in sorted(SECTION_2_1.glob("*.yaml"))]
    texts.append("\n".join(f"k{i}: {value}" for i, value in enumerate(SCALARS)) + "\n")
    texts.append("\n".join(f"l{i}: [{value}, {value}]" for i, value in enumerate(SCALARS) if value) + "\n")
    texts.append("---\n" + "\n---\n".join(SCALARS) + "\n")
    shared: dict[tuple[str, Any], str] = {}
    for text in texts * 2:  # the second round answers from the shared cache
        expected = [tags(node) for node in yaml.compose_all(text, Loader=getattr(yaml, loader))]
        documents, problems = parse_documents(text, "f.yaml", shared)
        assert not problems
        assert [tags(d.node) for d in documents] == [e for e in expected if e is not None]
    # A syntax error is still one located problem, and the cache does not leak the loader.
    documents, problems = parse_documents("a: [1\n", "bad.yaml", shared)
    assert not documents and problems[0].file == "bad.yaml" and problems[0].line >= 1


def test_loading_leaves_no_garbage_cycles_behind() -> None:
    sources = [(path.name, path.read_text()) for path in sorted(SECTION_2_1.glob("*.yaml"))]
    build_policy_set(sources, trust_domain=TD)  # the first load also builds what later loads reuse (CEL, classes)
    was = gc.isenabled()
    gc.disable()  # an automatic collection after the load would hide its cycles from the count below
    try:
        gc.collect()
        policy_set = build_policy_set(sources, trust_domain=TD)
        assert policy_set.policies
        assert gc.collect() == 0, "a load paused the collector: any cycle it made would stay until the next one"
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_while_loading_and_restored_after(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with collection_paused():
            assert not gc.isenabled()
            with collection_paused():  # nested: the inner one must not switch it back on
                assert not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(RuntimeError), collection_paused():
            raise RuntimeError("a load that fails")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


@pytest.mark.parametrize(
    "text",
    [
        OWN,
        OWN + "/shard/*",
        OWN + "/**",
        "spiffe://{trustDomain}/ns/{namespace}/**",
        "spiffe://{trustDomain}/{namespace}/**",
        "spiffe://{trustDomain}/ns/{namespace}*/sa/x",
        "spiffe://{trustDomain}/ns/x/sa/{serviceAccount}*",
        "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}-*",
        "spiffe://old.local/ns/{namespace}/sa/{serviceAccount}",
        "spiffe://{trustDomain}/ns/x/sa/ns/{namespace}",
        "spiffe://{trustDomain}/**",
    ],
)
def test_template_checks_handed_over_by_copy_equal_the_checks_worked_out_afresh(text: str) -> None:
    try:
        compiled = IdentityTemplate.compile(text, TD, frozenset())
    except TemplateError:
        pytest.skip("not a valid template")
    # made field by field, it works the answers out itself; copy() hands them over instead
    plain = IdentityTemplate(
        compiled.text, compiled.trust_domain, compiled.parts, compiled.globstar, compiled.variables, compiled.static
    )
    assert compiled.pins_namespace == plain.pins_namespace
    assert compiled.globbed_variables == plain.globbed_variables
    assert compiled.copy().pins_namespace == plain.pins_namespace


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_set=policy_sets(),
    inputs=st.lists(requests(), min_size=1, max_size=6),
    ca=st.sampled_from([CA_NOT_AFTER, NOW + timedelta(hours=6), NOW + timedelta(minutes=20)]),
)
def test_audit_findings_equal_those_of_full_shadow_decisions_over_generated_sets(
    policy_set: PolicySet, inputs: list[tuple[Caller, IssuanceRequest]], ca: datetime
) -> None:
    """Step 8's shortcuts (limits folded onto the enforced ones, a shorter grant reported without building its
    decision) against a whole shadow decision per Audit policy, over sets where Audit policies also carry rules
    that do not apply to the caller."""
    from policies.evaluator import decide_over, shadow_findings

    for caller, request in inputs:
        if caller.namespace == "kube-system":
            continue  # labels not synced: the Audit error path, covered elsewhere
        decision = evaluate(policy_set, caller, request, now=NOW, ca_not_after=ca, namespace_labels=labels_of)
        ctx = prepare(policy_set, caller, request, now=NOW, ca_not_after=ca, namespace_labels=labels_of)
        assert not isinstance(ctx, Decision)
        selection = select(policy_set, ctx)
        enforced = decide_over(policy_set, ctx, selection.enforced)
        expected = list(selection.audit_errors)
        for entry in selection.audited:
            shadow_entries = tuple(sorted((*selection.enforced, entry), key=lambda e: e.policy.order))
            expected.extend(shadow_findings(entry.policy, enforced, decide_over(policy_set, ctx, shadow_entries)))
        assert decision.audit_findings == tuple(expected), (caller, request)


def test_a_binding_audit_limit_is_named_even_when_the_policy_has_rules_for_other_callers() -> None:
    """The shorter-grant shortcut names the finding from the bound it would carry (``limits``), not from the
    policy's shape: this Audit policy has a rule, just none for orders/web."""
    grant = {"subjects": {"namespaces": ["*"]}, "rules": [{"name": "own", "effect": "Allow", "identities": [OWN]}]}
    audit = {
        "mode": "Audit",
        "subjects": {"namespaces": ["*"]},
        "limits": {"duration": {"max": "1h"}},
        "rules": [{"name": "payments-only", "effect": "Deny", "subjects": {"namespaces": ["payments"]}}],
    }
    sources = [("settings.yaml", SETTINGS)] + [
        (
            f"{name}.yaml",
            yaml.safe_dump(
                {
                    "apiVersion": "meshsigner.io/v1alpha1",
                    "kind": "IdentityPolicy",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            ),
        )
        for name, spec in (("grant", grant), ("cap-1h", audit))
    ]
    policy_set = build_policy_set(sources, trust_domain=TD)
    caller = Caller(TD, "orders", "web")
    request = IssuanceRequest(uris=(caller.spiffe_id,), validity_seconds=7200)
    decision = evaluate(policy_set, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER)
    assert decision.allowed and decision.duration_seconds == 7200
    (finding,) = decision.audit_findings
    assert (finding.policy, finding.rule, finding.finding) == ("cap-1h", "limits", "AUDIT_WOULD_CLAMP")
    assert finding.message == "would issue 3600s (1h0m0s) instead of 7200s (2h0m0s)"


IDENTITY_TEMPLATES = [
    OWN,
    OWN + "/shard/*",
    OWN + "/**",
    "spiffe://{trustDomain}/ns/{namespace}/sa/*",
    "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}/x-*-y",
    "spiffe://{trustDomain}/ns/{namespace}/**",
    "spiffe://old.local/ns/{namespace}/sa/{serviceAccount}",
    "spiffe://{trustDomain}/ns/{namespace}/sa/{podName}",
]


def glob_matches(template: IdentityTemplate, uri: SpiffeID, lookup: Any) -> bool | None:
    """Matching as the format states it: render, then compare segment by segment as globs (None: no render)."""
    if uri.trust_domain != (template.trust_domain or TD):
        return False
    pattern = template.render(lookup)
    if pattern is None:
        return None
    from policies.globs import match_pieces

    if template.globstar:
        return len(uri.segments) > len(pattern) and all(
            match_pieces(pieces, segment) for pieces, segment in zip(pattern, uri.segments, strict=False)
        )
    return len(uri.segments) == len(pattern) and all(
        match_pieces(pieces, segment) for pieces, segment in zip(pattern, uri.segments, strict=True)
    )


@settings(max_examples=400, deadline=None)
@given(
    text=st.sampled_from(IDENTITY_TEMPLATES),
    namespace=st.sampled_from(["orders", "a", "ns", "x-1-y"]),
    account=st.sampled_from(["web", "api", "x-1-y"]),
    pod=st.sampled_from([None, "web-0", "bad/pod"]),
    domain=st.sampled_from([TD, "old.local"]),
    shape=st.sampled_from(["own", "own+", "own-", "neighbour", "other"]),
    extra=st.lists(st.sampled_from(["ns", "sa", "orders", "web", "shard", "3", "x-1-y", "web-0"]), max_size=4),
)
def test_identity_matching_by_plain_text_equals_matching_by_globs(
    text: str, namespace: str, account: str, pod: str | None, domain: str, shape: str, extra: list[str]
) -> None:
    template = IdentityTemplate.compile(text, TD, frozenset())
    own = ["ns", namespace, "sa", account]
    neighbour = ["ns", namespace, "sa", "api" if account != "api" else "web"]  # differs in the last segment only
    shapes = {"own": own, "own+": own + extra, "own-": own[: len(own) - len(extra)], "neighbour": neighbour}
    path = shapes.get(shape, extra)
    values = {"trustDomain": TD, "namespace": namespace, "serviceAccount": account}
    if pod is not None:
        values["podName"] = pod
    uri = parse_spiffe_id(f"spiffe://{domain}" + "".join("/" + segment for segment in path))
    for _ in range(2):  # the second time from the render cache
        expected = glob_matches(template, uri, values.get)
        assert template.matches(uri, TD, values.get) is (expected is True)
        assert template.matches(uri, TD, values.get, for_deny=True) is (expected is not False)


def test_a_reused_rule_copies_every_field_but_its_place_and_its_render_caches() -> None:
    sources = [(path.name, path.read_text()) for path in sorted(SECTION_2_1.glob("*.yaml"))]
    policy_set = build_policy_set(sources, trust_domain=TD)
    for policy in policy_set.policies:
        for rule in policy.rules:
            copied = rule.copy_for("elsewhere", rule.index + 7)
            for item in fields(rule):
                if item.name in ("policy", "index", "qualified_name", "granted_message"):
                    continue
                assert getattr(copied, item.name) == getattr(rule, item.name), item.name
            assert (copied.policy, copied.index, copied.qualified_name) == (
                "elsewhere",
                rule.index + 7,
                f"elsewhere/{rule.name}",
            )
            for mine, theirs in zip(copied.identities, rule.identities, strict=True):
                assert mine._cache is not theirs._cache
            for dns_mine, dns_theirs in zip(copied.dns_names, rule.dns_names, strict=True):
                assert dns_mine._cache is not dns_theirs._cache


def test_a_load_compiles_each_distinct_rule_once_and_reports_problems_at_every_copy() -> None:
    """Teams repeat the same rules: the second compile is a copy. A rule with a problem is never reused, so the
    problem is reported at each place it is written."""
    from policies.problems import PolicySetInvalid

    def team(name: str, extra: str = "") -> str:
        dns = "{serviceAccount}.{namespace}.svc"
        return (
            "apiVersion: meshsigner.io/v1alpha1\nkind: IdentityPolicy\n"
            f"metadata: {{name: {name}}}\nspec:\n  subjects: {{namespaces: [{name}]}}\n  rules:\n"
            f"    - {{name: own, effect: Allow, identities: ['{OWN}']}}\n"
            f"    - {{name: dns, effect: Allow, identities: ['{OWN}'], dnsNames: [{dns!r}]}}\n" + extra
        )

    sources = [("settings.yaml", SETTINGS), ("a.yaml", team("a")), ("b.yaml", team("b"))]
    policy_set = build_policy_set(sources, trust_domain=TD)
    a, b = (policy_set.policy_named(name) for name in ("a", "b"))
    assert a is not None and b is not None
    assert [r.qualified_name for r in b.rules] == ["b/own", "b/dns"]
    assert b.rules[1].identities[0] is not a.rules[1].identities[0]
    caller = Caller(TD, "b", "web")
    request = IssuanceRequest(uris=(caller.spiffe_id,), dns_names=("web.b.svc",), validity_seconds=3600)
    assert evaluate(policy_set, caller, request, now=NOW, ca_not_after=CA_NOT_AFTER).granted_by == "b/dns"

    broken = "    - {name: bad, effect: Allow, identities: ['spiffe://{trustDomain}/x/{namespace}']}\n"
    with pytest.raises(PolicySetInvalid) as raised:
        build_policy_set([("settings.yaml", SETTINGS), ("a.yaml", team("a", broken)), ("b.yaml", team("b", broken))])
    located = [p for p in raised.value.problems if p.path == "spec.rules[2].identities[0]"]
    assert sorted(p.file for p in located) == ["a.yaml", "b.yaml"]


@settings(max_examples=300, deadline=None)
@given(
    block=subject_blocks(),
    namespace=st.sampled_from([*NAMESPACES, "a/b", ""]),
    account=st.sampled_from([*ACCOUNTS, "a/b", ""]),
)
def test_the_static_subject_match_agrees_with_the_explained_one(
    block: dict[str, Any], namespace: str, account: str
) -> None:
    """``static_matches`` (with its shortcut for subjects that name nobody in particular) against ``check``, which
    tests every field for explain: the two must agree, the label selector aside."""
    from policies.schema_readers import Reporter
    from policies.subject_compiler import compile_subjects

    block = {key: value for key, value in block.items() if key != "namespaceSelector"}
    report = Reporter("t.yaml")
    subjects = compile_subjects(block, "spec.subjects", report, build_policy_set([("s.yaml", SETTINGS)]).settings)
    assert subjects is not None and not report.problems
    ctx = EvaluationContext(
        Caller(TD, namespace, account),
        IssuanceRequest(),
        (),
        now=NOW,
        ca_not_after=None,
        primary_trust_domain=TD,
        cluster_domain="cluster.local",
        namespace_labels=None,
    )
    assert subjects.static_matches(ctx) is (not subjects.check(ctx, ""))
