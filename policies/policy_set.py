"""An immutable, validated policy set: the unit that is loaded, swapped and identified by its revision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.compiled import Effect, Limits, Mode, ObjectRef, Policy, PolicySettings, Rule
from policies.compiler import istio_compatible_rule
from policies.context import EvaluationContext
from policies.precheck import PrecheckSettings
from policies.problems import Problem
from policies.subject_index import SubjectIndex

_APPLICABLE_CACHE_LIMIT = 65536
# A policy with more rules than this gets an index of its own rules (a compliance policy of many Deny rules, each
# about a few service accounts); a smaller one is cheaper to scan.
_RULE_INDEX_THRESHOLD = 8
SETTINGS_KEY = "settings"  # the settings' entry in ``PolicySet.objects`` (a reserved policy name: no clash)


@dataclass(frozen=True, slots=True)
class Applicable:
    """A policy whose subjects match a (namespace, service account), with the rules whose subjects do too.

    Label selectors are not part of this: they are checked per decision (labels change, names do not).
    """

    policy: Policy
    allow_rules: tuple[Rule, ...]
    deny_rules: tuple[Rule, ...]


def _rules_for(rules: tuple[Rule, ...], ctx: EvaluationContext) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    """The Allow and the Deny rules of ``rules`` whose own subjects match the caller (label selectors aside)."""
    allow: list[Rule] = []
    deny: list[Rule] = []
    for rule in rules:
        if rule.subjects is None or rule.subjects.static_matches(ctx):
            (allow if rule.effect is Effect.ALLOW else deny).append(rule)
    return tuple(allow), tuple(deny)


def scan_applicable(policies: Sequence[Policy], ctx: EvaluationContext) -> tuple[Applicable, ...]:
    """What ``PolicySet.applicable`` answers, by testing every policy and rule: the reference its index must
    reproduce exactly (and what the property tests compare it with)."""
    result = []
    for policy in policies:
        if policy.mode is Mode.DISABLED or not policy.subjects.static_matches(ctx):
            continue
        result.append(Applicable(policy, *_rules_for(policy.rules, ctx)))
    return tuple(result)


class PolicySet:
    """Settings plus policies in step 4's order, indexed so a decision reads only what can apply to its caller.

    Policies are filed under the namespaces (or else the service accounts) their subjects pin, and so are the rules
    of a policy with many rules (``subject_index``); a decision looks up the caller's namespace and service account
    and runs the full subject check only on what it finds. The result per (namespace, service account) is cached
    (bounded) because the set never changes.
    """

    def __init__(
        self,
        settings: PolicySettings,
        policies: Sequence[Policy],
        *,
        revision: str,
        warnings: Sequence[Problem] = (),
        files: Sequence[str] = (),
        objects: Mapping[str, ObjectRef] | None = None,
    ) -> None:
        self.settings = settings
        self.policies: tuple[Policy, ...] = tuple(sorted(policies, key=lambda p: p.order))
        self.revision = revision
        self.warnings = tuple(warnings)
        self.files = tuple(files)
        # policy name (and SETTINGS_KEY) -> the Kubernetes object it was read from; empty for the directory source
        self.objects: Mapping[str, ObjectRef] = dict(objects or {})
        self._active = tuple(p for p in self.policies if p.mode is not Mode.DISABLED)
        self._index = SubjectIndex([p.subjects for p in self._active])
        self._rule_indexes = {
            position: SubjectIndex([r.subjects for r in policy.rules])
            for position, policy in enumerate(self._active)
            if len(policy.rules) > _RULE_INDEX_THRESHOLD
        }
        self._by_name = {policy.name: policy for policy in self.policies}
        self._applicable: dict[tuple[str, str], tuple[Applicable, ...]] = {}
        self.fallback_rule: Rule | None = (
            istio_compatible_rule(settings) if settings.default_decision == "IstioCompatible" else None
        )
        self.settings_limits = Limits(
            policy="settings",
            duration_min=settings.duration_min or None,
            duration_max=settings.duration_max,
            name="settings",
        )
        self.precheck_settings = PrecheckSettings(
            primary_trust_domain=settings.trust_domain,
            trust_domain_aliases=settings.trust_domain_aliases,
            max_uris=settings.max_uris,
            stamp_caller_identity_when_missing=settings.on_missing_uri == "UseCallerIdentity",
            revision=revision,
        )
        self.needs_namespace_labels = any(p.needs_labels for p in self._active)

    def applicable(self, ctx: EvaluationContext) -> tuple[Applicable, ...]:
        """The policies and rules whose subjects match the caller, ignoring label selectors (cached)."""
        key = (ctx.caller.namespace, ctx.caller.service_account)
        cached = self._applicable.get(key)
        if cached is None:
            cached = self.lookup(ctx)
            if len(self._applicable) >= _APPLICABLE_CACHE_LIMIT:
                self._applicable.clear()
            self._applicable[key] = cached
        return cached

    def lookup(self, ctx: EvaluationContext) -> tuple[Applicable, ...]:
        """``applicable`` without the cache: through the indexes, the same answer as ``scan_applicable``."""
        namespace, account = ctx.caller.namespace, ctx.caller.service_account
        result = []
        for position in self._index.candidates(namespace, account):
            policy = self._active[position]
            if not policy.subjects.static_matches(ctx):
                continue
            rules = policy.rules
            rule_index = self._rule_indexes.get(position)
            if rule_index is not None:
                rules = tuple(rules[i] for i in rule_index.candidates(namespace, account))
            result.append(Applicable(policy, *_rules_for(rules, ctx)))
        return tuple(result)

    @property
    def has_settings_document(self) -> bool:
        """Whether the settings came from a PolicySettings document rather than the built-in defaults."""
        return bool(self.settings.source)

    def policy_named(self, name: str) -> Policy | None:
        return self._by_name.get(name)

    def object_of(self, name: str) -> ObjectRef | None:
        """The Kubernetes object policy ``name`` (or ``SETTINGS_KEY``) was read from; None for a file."""
        return self.objects.get(name)

    @property
    def short_revision(self) -> str:
        return self.revision.removeprefix("sha256:")[:12]

    @property
    def rule_count(self) -> int:
        return sum(len(p.rules) for p in self.policies)
