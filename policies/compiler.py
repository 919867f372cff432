"""Turns schema-checked documents into compiled settings and policies, with the semantic checks of §3.

The schema already rejected unknown fields and bad types; this adds what needs context: duration ranges
(``min <= default <= max <= settings.duration.max``), templates that can render a valid SPIFFE ID, globs,
principals that can match Istio's five segments, trust-domain opt-ins, cross-namespace grants, label keys that
are trusted, and warnings for rules that can never apply. Problems go to the document's ``Reporter`` so each one
carries its ``file:line:col``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, overload

from clocks.durations import describe_duration as show
from policies.compiled import (
    DEFAULT_KEY_ALGORITHMS,
    DEFAULT_USAGES,
    KNOWN_KEY_ALGORITHMS,
    KNOWN_USAGES,
    DurationRange,
    Effect,
    KeyPolicy,
    Limits,
    Mode,
    Policy,
    PolicySettings,
    Rule,
)
from policies.conditions import MAX_CONDITIONS_PER_RULE, Condition, ConditionCompiler, ConditionError
from policies.globs import NameGlob
from policies.schema_readers import Reporter
from policies.subject_compiler import compile_subjects
from policies.subjects import Subjects
from policies.templates import IdentityTemplate, TemplateCompiler, TemplateError

GIT_SHA_ANNOTATION = "meshsigner.io/git-sha"
_ALLOW_ONLY_FIELDS = ("trustDomains", "allowWildcardDNSNames", "allowCrossNamespace", "duration", "usages")


def compile_settings(
    fields: dict[str, Any], report: Reporter, *, expected_trust_domain: str | None, source: str
) -> PolicySettings:
    spec = fields["spec"]
    trust_domain = spec.get("trustDomain", expected_trust_domain or "cluster.local")
    if expected_trust_domain is not None and trust_domain != expected_trust_domain:
        report.error(
            "spec.trustDomain",
            f"{trust_domain!r} differs from the server's trust domain {expected_trust_domain!r}",
        )
    aliases = frozenset(spec.get("trustDomainAliases", ()))
    if trust_domain in aliases:
        report.error("spec.trustDomainAliases", f"{trust_domain!r} is the primary trust domain, not an alias")
    duration = spec.get("duration", {})
    defaults = PolicySettings()
    default = duration.get("default", defaults.duration_default)
    minimum = duration.get("min", 0)
    maximum = duration.get("max", defaults.duration_max)
    if maximum <= 0:
        report.error("spec.duration.max", "must be positive")
    if default <= 0:
        report.error("spec.duration.default", "must be positive")
    if default > maximum:
        report.error("spec.duration.default", f"{show(default)} exceeds spec.duration.max {show(maximum)}")
    if minimum > default:
        report.error("spec.duration.min", f"{show(minimum)} exceeds spec.duration.default {show(default)}")
    key = _key(spec.get("key"), "spec.key", report, KeyPolicy(frozenset(DEFAULT_KEY_ALGORITHMS)))
    usages = _usages(spec.get("usages", DEFAULT_USAGES), "spec.usages", report)
    san = spec.get("san", {})
    annotations = fields["metadata"].get("annotations", {})
    return PolicySettings(
        trust_domain=trust_domain,
        trust_domain_aliases=aliases,
        cluster_domain=spec.get("clusterDomain", "cluster.local"),
        default_decision=spec.get("defaultDecision", "Deny"),
        duration_default=default,
        duration_min=minimum,
        duration_max=maximum,
        non_positive=duration.get("nonPositive", "UseDefault"),
        ca_on_exceed=spec.get("caValidity", {}).get("onExceed", "Clamp"),
        max_uris=san.get("maxURIs", 1),
        on_missing_uri=san.get("onMissingURI", "Deny"),
        node_service_accounts=frozenset(spec.get("impersonation", {}).get("nodeServiceAccounts", ())),
        trusted_namespace_label_keys=frozenset(spec.get("trustedNamespaceLabelKeys", ())),
        client_messages=spec.get("clientMessages", "Detailed"),
        key=key,
        usages=usages,
        git_sha=annotations.get(GIT_SHA_ANNOTATION),
        source=source,
        shadow_policy_set=spec.get("shadowPolicySet"),
    )


@overload
def _key(spec: dict[str, Any] | None, path: str, report: Reporter, fallback: KeyPolicy) -> KeyPolicy: ...
@overload
def _key(spec: dict[str, Any] | None, path: str, report: Reporter, fallback: KeyPolicy | None) -> KeyPolicy | None: ...
def _key(spec: dict[str, Any] | None, path: str, report: Reporter, fallback: KeyPolicy | None) -> KeyPolicy | None:
    """A ``key`` block; a field it omits is inherited from ``fallback`` (a block with only ``minRSABits`` keeps
    the fallback's algorithm list instead of allowing every algorithm)."""
    if spec is None:
        return fallback
    algorithms = spec.get("algorithms")
    for index, algorithm in enumerate(algorithms or ()):
        if algorithm not in KNOWN_KEY_ALGORITHMS:
            known = ", ".join(sorted(KNOWN_KEY_ALGORITHMS))
            report.error(f"{path}.algorithms[{index}]", f"unknown key algorithm {algorithm!r} (known: {known})")
    if algorithms is not None:
        allowed: frozenset[str] | None = frozenset(algorithms)
    else:
        allowed = fallback.algorithms if fallback is not None else None
    min_rsa_bits = spec.get("minRSABits", fallback.min_rsa_bits if fallback is not None else None)
    return KeyPolicy(allowed, min_rsa_bits)


def _usages(values: Any, path: str, report: Reporter) -> frozenset[str]:
    for index, usage in enumerate(values):
        if usage not in KNOWN_USAGES:
            report.error(f"{path}[{index}]", f"unknown usage {usage!r} (known: {', '.join(sorted(KNOWN_USAGES))})")
    return frozenset(values)


def _duration_block(
    spec: dict[str, Any] | None, path: str, report: Reporter, settings: PolicySettings
) -> dict[str, Any]:
    """Check an explicit duration block against itself and the settings ceiling."""
    if not spec:
        return {}
    ceiling = settings.duration_max
    for name in ("default", "min", "max"):
        value = spec.get(name)
        if value is None:
            continue
        if name != "min" and value <= 0:
            report.error(f"{path}.{name}", "must be positive")
        elif value > ceiling:
            report.error(f"{path}.{name}", f"{show(value)} exceeds settings.duration.max {show(ceiling)}")
    low, default, high = spec.get("min"), spec.get("default"), spec.get("max")
    if low is not None and high is not None and low > high:
        report.error(f"{path}.min", f"{show(low)} exceeds {path}.max {show(high)}: the range is empty")
    if default is not None and high is not None and default > high:
        report.error(f"{path}.default", f"{show(default)} exceeds {path}.max {show(high)}")
    if default is not None and low is not None and default < low:
        report.error(f"{path}.default", f"{show(default)} is below {path}.min {show(low)}")
    return spec


def _resolve_duration(
    rule: dict[str, Any], policy: dict[str, Any], settings: PolicySettings, path: str, report: Reporter
) -> DurationRange:
    def pick(name: str, fallback: Any) -> Any:
        return rule.get(name, policy.get(name, fallback))

    resolved = DurationRange(
        default=pick("default", settings.duration_default),
        minimum=pick("min", 0),
        maximum=pick("max", settings.duration_max),
        on_exceed=pick("onExceed", "Clamp"),
        on_below=pick("onBelow", "Deny"),
    )
    if resolved.minimum > resolved.maximum and not ("min" in rule and "max" in rule):
        report.error(path, f"inherited range is empty: min {show(resolved.minimum)} > max {show(resolved.maximum)}")
    elif not resolved.minimum <= resolved.default <= resolved.maximum and "default" not in rule:
        report.warn(
            path,
            f"the inherited default {show(resolved.default)} lies outside [{show(resolved.minimum)}, "
            f"{show(resolved.maximum)}]; requests without a duration get it clamped into the range",
        )
    return resolved


def compile_policy(
    fields: dict[str, Any],
    report: Reporter,
    settings: PolicySettings,
    *,
    source: str,
    conditions: ConditionCompiler | None = None,
    templates: TemplateCompiler | None = None,
    confined_to: str | None = None,
    known_rules: KnownRules | None = None,
) -> Policy:
    """``conditions`` compiles ``when`` expressions and ``templates`` identity and DNS templates; share one of each
    per load (each distinct text is compiled once), and one ``known_rules`` (each distinct rule is compiled once).

    ``confined_to`` is the namespace of a namespaced object outside the root namespace: the policy then applies
    only to that namespace's workloads and may grant only identities and DNS names of that namespace, so the
    namespace's owners hold grants for their own workloads and no one else's. Its name becomes ``<ns>:<name>``.
    """
    conditions = conditions if conditions is not None else ConditionCompiler()
    if templates is None:
        templates = TemplateCompiler(settings.trust_domain, settings.trusted_namespace_label_keys)
    name = fields["metadata"]["name"]
    spec = fields["spec"]
    if confined_to is not None:
        name = f"{confined_to}:{name}"
        spec = _confine(spec, confined_to, report, settings)
    subjects = compile_subjects(spec.get("subjects"), "spec.subjects", report, settings)
    if subjects is None:
        report.warn("spec", "no subjects: this policy applies to every caller (write namespaces: ['*'] to say so)")
        subjects = Subjects()
    policy_duration = _duration_block(spec.get("duration"), "spec.duration", report, settings)
    rules = []
    seen: dict[str, int] = {}
    for index, rule_spec in enumerate(spec.get("rules", [])):
        path = f"spec.rules[{index}]"
        if rule_spec["name"] in seen:
            report.error(
                f"{path}.name", f"duplicate rule name {rule_spec['name']!r} (also rules[{seen[rule_spec['name']]}])"
            )
        seen.setdefault(rule_spec["name"], index)
        rules.append(
            _rule_once(
                name, index, rule_spec, policy_duration, path, report, settings, conditions, templates, known_rules
            )
        )
    limits = None
    if "limits" in spec:
        limits = _limits(name, spec["limits"], report, settings)
    if not rules and limits is None:
        report.warn("spec", "the policy has neither rules nor limits: it does nothing")
    _warn_unreachable(subjects, rules, report)
    expires_at = spec.get("expiresAt")
    _warn_expiry(expires_at, spec.get("ticket"), "spec", report)
    return Policy(
        name=name,
        mode=Mode(spec.get("mode", "Enforce")),
        priority=spec.get("priority", 0),
        subjects=subjects,
        rules=tuple(rules),
        limits=limits,
        expires_at=expires_at,
        ticket=spec.get("ticket"),
        annotations=dict(fields["metadata"].get("annotations", {})),
        source=source,
    )


def _confine(spec: dict[str, Any], namespace: str, report: Reporter, settings: PolicySettings) -> dict[str, Any]:
    """The spec of a namespaced policy, held to its namespace (``compile_policy``'s ``confined_to``)."""
    subjects = dict(spec.get("subjects", {}))
    if subjects.get("namespaces", [namespace]) != [namespace]:
        report.error(
            "spec.subjects.namespaces",
            f"a policy in namespace {namespace!r} applies only to that namespace: write [{namespace}] or omit it",
        )
    subjects["namespaces"] = [namespace]  # subjects AND together: nothing else can widen this
    own_dns = re.compile(
        rf"(?:.+\.)?(?:\{{namespace\}}|{re.escape(namespace)})\.svc"
        rf"(?:\.(?:\{{clusterDomain\}}|{re.escape(settings.cluster_domain)}))?"
    )
    for index, rule in enumerate(spec.get("rules", [])):
        path = f"spec.rules[{index}]"
        if rule.get("allowCrossNamespace"):
            report.error(
                f"{path}.allowCrossNamespace",
                f"a policy in namespace {namespace!r} cannot grant other namespaces' identities",
            )
        for dns_index, text in enumerate(rule.get("dnsNames", []) if rule["effect"] == "Allow" else []):
            if not own_dns.fullmatch(text):
                report.error(
                    f"{path}.dnsNames[{dns_index}]",
                    f"a policy in namespace {namespace!r} may grant only names under {{namespace}}.svc "
                    f"(<name>.{namespace}.svc[.{settings.cluster_domain}])",
                )
    return {**spec, "subjects": subjects}


KnownRules = dict[tuple[str, str], Rule]


def _rule_once(
    policy: str,
    index: int,
    spec: dict[str, Any],
    policy_duration: dict[str, Any],
    path: str,
    report: Reporter,
    settings: PolicySettings,
    conditions: ConditionCompiler,
    templates: TemplateCompiler,
    known: KnownRules | None,
) -> Rule:
    """``_rule``, compiled once per distinct (rule, inherited duration) within a load: large sets repeat the same
    rules in every team's policy. Only a rule that compiled without a single problem (error or warning) is reused,
    since problems name the path they were found at; a reused rule takes its policy, index and its own copies of
    its templates (``Rule.copy_for``)."""
    if known is None:
        return _rule(policy, index, spec, policy_duration, path, report, settings, conditions, templates)
    # The checked fields are str, int, bool, datetime, lists and dicts of them: equal reprs mean equal contents.
    key = (repr(spec), repr(policy_duration))
    rule = known.get(key)
    if rule is not None:
        return rule.copy_for(policy, index)
    before = len(report.problems)
    rule = _rule(policy, index, spec, policy_duration, path, report, settings, conditions, templates)
    if len(report.problems) == before:
        known[key] = rule
    return rule


def _rule(
    policy: str,
    index: int,
    spec: dict[str, Any],
    policy_duration: dict[str, Any],
    path: str,
    report: Reporter,
    settings: PolicySettings,
    conditions: ConditionCompiler,
    templates: TemplateCompiler,
) -> Rule:
    effect = Effect(spec["effect"])
    if effect is Effect.DENY:
        for name in _ALLOW_ONLY_FIELDS:
            if name in spec:
                report.error(f"{path}.{name}", "only Allow rules take this field")
        if "key" in spec and "minRSABits" in spec["key"]:
            report.error(f"{path}.key.minRSABits", "a Deny rule matches keys by key.algorithms only")
    elif "identities" not in spec:
        report.error(f"{path}.identities", "an Allow rule must list the identities it grants")
    trust_domains = frozenset(spec.get("trustDomains", [settings.trust_domain]))
    for td_index, trust_domain in enumerate(spec.get("trustDomains", [])):
        if trust_domain != settings.trust_domain and trust_domain not in settings.trust_domain_aliases:
            report.error(
                f"{path}.trustDomains[{td_index}]",
                f"{trust_domain!r} is neither the primary trust domain nor in settings.trustDomainAliases",
            )
    identities = []
    for id_index, text in enumerate(spec.get("identities", [])):
        where = f"{path}.identities[{id_index}]"
        try:
            template = templates.identity(text)
        except TemplateError as exc:
            report.error(where, str(exc))
            continue
        identities.append(template)
        if effect is Effect.DENY:
            continue
        trust_domain = template.trust_domain or settings.trust_domain
        if trust_domain not in trust_domains:
            report.error(
                where,
                f"trust domain {trust_domain!r} is not in this rule's trustDomains "
                f"[{', '.join(sorted(trust_domains))}]; add it there to opt in",
            )
        globbed = template.globbed_variables
        if globbed:
            shown = ", ".join("{" + name + "}" for name in globbed)
            report.error(
                where,
                f"{shown} shares a path segment with *, so the star also matches other values "
                "(sa/{serviceAccount}* lets web claim webhook); put the * in a segment of its own",
            )
        cross_namespace = spec.get("allowCrossNamespace", False)
        if not cross_namespace and "namespace" not in template.variables:
            report.error(
                where,
                "grants identities outside the caller's namespace (no {namespace}); "
                "set allowCrossNamespace: true if that is intended",
            )
        elif not cross_namespace and not template.pins_namespace:
            report.error(
                where,
                "grants identities outside the caller's namespace: the path must start with ns/{namespace} "
                "(a literal ns segment, then {namespace} as a whole segment) to stay in the caller's namespace; "
                "set allowCrossNamespace: true if that is intended",
            )
    dns_names = []
    for dns_index, text in enumerate(spec.get("dnsNames", [])):
        try:
            dns_names.append(templates.dns(text))
        except TemplateError as exc:
            report.error(f"{path}.dnsNames[{dns_index}]", str(exc))
    duration = None
    # Allow rules inherit what their key block omits from the settings; for a Deny rule the block only lists
    # the algorithms that trigger it.
    key = _key(spec.get("key"), f"{path}.key", report, settings.key if effect is Effect.ALLOW else None)
    usages: frozenset[str] = frozenset()
    if effect is Effect.ALLOW:
        rule_duration = _duration_block(spec.get("duration"), f"{path}.duration", report, settings)
        duration = _resolve_duration(rule_duration, policy_duration, settings, f"{path}.duration", report)
        usages = _usages(spec["usages"], f"{path}.usages", report) if "usages" in spec else settings.usages
    _warn_expiry(spec.get("expiresAt"), spec.get("ticket"), path, report)
    when = _conditions(spec.get("when", ()), f"{path}.when", report, conditions)
    return Rule(
        policy=policy,
        index=index,
        name=spec["name"],
        effect=effect,
        subjects=compile_subjects(spec.get("subjects"), f"{path}.subjects", report, settings),
        identities=tuple(identities),
        trust_domains=trust_domains,
        dns_names=tuple(dns_names),
        allow_wildcard_dns_names=spec.get("allowWildcardDNSNames", False),
        duration=duration,
        key=key,
        usages=usages,
        expires_at=spec.get("expiresAt"),
        ticket=spec.get("ticket"),
        message=spec.get("message"),
        conditions=when,
        condition_variables=frozenset().union(*(c.variables for c in when)),
    )


def _conditions(texts: Any, path: str, report: Reporter, compiler: ConditionCompiler) -> tuple[Condition, ...]:
    """``when``: each CEL expression compiled and bounded now, so a bad one is a load error with its path."""
    if len(texts) > MAX_CONDITIONS_PER_RULE:
        report.error(path, f"{len(texts)} conditions; a rule takes at most {MAX_CONDITIONS_PER_RULE} (use &&)")
        return ()
    compiled = []
    for index, text in enumerate(texts):
        try:
            compiled.append(compiler.compile(text))
        except ConditionError as exc:
            report.error(f"{path}[{index}]", f"CEL: {exc}")
    return tuple(compiled)


def _limits(policy: str, spec: dict[str, Any], report: Reporter, settings: PolicySettings) -> Limits:
    duration = spec.get("duration", {})
    low, high = duration.get("min"), duration.get("max")
    if high is not None and high <= 0:
        report.error("spec.limits.duration.max", "must be positive")
    if low is not None and high is not None and low > high:
        report.warn(
            "spec.limits.duration",
            f"min {show(low)} > max {show(high)}: every grant for these subjects is denied DURATION_RANGE_EMPTY",
        )
    if low is not None and low > settings.duration_max:
        report.warn(
            "spec.limits.duration.min",
            f"{show(low)} exceeds settings.duration.max {show(settings.duration_max)}: every grant is denied",
        )
    return Limits(
        policy=policy,
        duration_min=low,
        duration_max=high,
        on_exceed=duration.get("onExceed", "Clamp"),
        on_below=duration.get("onBelow", "Deny"),
        key=_key(spec.get("key"), "spec.limits.key", report, None),
    )


def _warn_expiry(expires_at: datetime | None, ticket: str | None, path: str, report: Reporter) -> None:
    if expires_at is not None and ticket is None:
        report.warn(f"{path}.expiresAt", "a time-bound exception should name its ticket")


def _warn_unreachable(subjects: Subjects, rules: list[Rule], report: Reporter) -> None:
    """Rules whose own literal namespaces cannot meet the policy's, and Allow rules repeated verbatim."""
    outer = subjects.literal_namespaces
    seen: dict[tuple[Any, ...], str] = {}
    for rule in rules:
        path = f"spec.rules[{rule.index}]"
        inner = rule.subjects.namespaces if rule.subjects is not None else None
        if outer is not None and inner and not any(_glob_hits(p.pattern, outer) for p in inner):
            report.warn(f"{path}.subjects.namespaces", "can never apply: matches none of the policy's namespaces")
        if rule.effect is Effect.ALLOW:
            shape = (
                rule.subjects,
                tuple(t.text for t in rule.identities),
                rule.trust_domains,
                tuple(t.text for t in rule.dns_names),
                rule.allow_wildcard_dns_names,
                rule.duration,
                rule.key,
                rule.usages,
                rule.expires_at,
                rule.conditions,
            )
            if shape in seen:
                report.warn(path, f"repeats rule {seen[shape]!r} exactly; it can never change a decision")
            seen.setdefault(shape, rule.name)


def _glob_hits(pattern: str, names: frozenset[str]) -> bool:
    glob = NameGlob.compile(pattern)
    return any(glob.matches(name) for name in names)


def istio_compatible_rule(settings: PolicySettings) -> Rule:
    """``defaultDecision: IstioCompatible``: own identity only, no DNS names, istio-csr's clamp to the ceiling."""
    own = IdentityTemplate.compile(
        "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}", settings.trust_domain, frozenset()
    )
    return Rule(
        policy="builtin",
        index=0,
        name="own-identity",
        effect=Effect.ALLOW,
        identities=(own,),
        trust_domains=frozenset({settings.trust_domain}),
        duration=DurationRange(settings.duration_default, 0, settings.duration_max, "Clamp", "Deny"),
        key=settings.key,
        usages=settings.usages,
    )
