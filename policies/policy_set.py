"""An immutable, validated policy set: the unit that is loaded, swapped and identified by its revision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.compiled import Limits, Mode, Policy, PolicySettings, Rule
from policies.compiler import istio_compatible_rule
from policies.context import EvaluationContext
from policies.precheck import PrecheckSettings
from policies.problems import Problem

_CANDIDATE_CACHE_LIMIT = 16384
_APPLICABLE_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Applicable:
    """A policy whose subjects match a (namespace, service account), with the rules whose subjects do too.

    Label selectors are not part of this: they are checked per decision (labels change, names do not).
    """

    policy: Policy
    allow_rules: tuple[Rule, ...]
    deny_rules: tuple[Rule, ...]


class PolicySet:
    """Settings plus policies in step 4's order, indexed by namespace so a decision reads only what can apply.

    A policy whose ``subjects.namespaces`` are all literal is indexed under those names; the others are filtered
    by their namespace patterns. The per-namespace result is cached (bounded) because the set never changes, so a
    decision only looks at the policies whose namespace patterns already match.
    """

    def __init__(
        self,
        settings: PolicySettings,
        policies: Sequence[Policy],
        *,
        revision: str,
        warnings: Sequence[Problem] = (),
        files: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.policies: tuple[Policy, ...] = tuple(sorted(policies, key=lambda p: p.order))
        self.revision = revision
        self.warnings = tuple(warnings)
        self.files = tuple(files)
        self._by_namespace: dict[str, list[int]] = {}
        self._everywhere: list[int] = []
        for position, policy in enumerate(self.policies):
            if policy.mode is Mode.DISABLED:
                continue
            names = policy.subjects.literal_namespaces
            if names is None:
                self._everywhere.append(position)
            else:
                for name in names:
                    self._by_namespace.setdefault(name, []).append(position)
        self._candidates: dict[str, tuple[Policy, ...]] = {}
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
        self.needs_namespace_labels = any(p.needs_labels for p in self.policies if p.mode is not Mode.DISABLED)

    def candidates(self, namespace: str) -> tuple[Policy, ...]:
        """Enforce- and Audit-mode policies whose namespace patterns match ``namespace``, in step 4's order."""
        cached = self._candidates.get(namespace)
        if cached is None:
            positions = sorted({*self._everywhere, *self._by_namespace.get(namespace, ())})
            candidates = (self.policies[p] for p in positions)
            cached = tuple(p for p in candidates if p.subjects.namespace_matches(namespace))
            if len(self._candidates) >= _CANDIDATE_CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[namespace] = cached
        return cached

    def applicable(self, ctx: EvaluationContext) -> tuple[Applicable, ...]:
        """The policies and rules whose subjects match the caller, ignoring label selectors (cached)."""
        key = (ctx.caller.namespace, ctx.caller.service_account)
        cached = self._applicable.get(key)
        if cached is None:
            cached = tuple(
                Applicable(
                    policy,
                    tuple(r for r in policy.allow_rules if r.subjects is None or r.subjects.static_matches(ctx)),
                    tuple(r for r in policy.deny_rules if r.subjects is None or r.subjects.static_matches(ctx)),
                )
                for policy in self.candidates(ctx.caller.namespace)
                if policy.subjects.static_matches(ctx)
            )
            if len(self._applicable) >= _APPLICABLE_CACHE_LIMIT:
                self._applicable.clear()
            self._applicable[key] = cached
        return cached

    @property
    def has_settings_document(self) -> bool:
        """Whether the settings came from a PolicySettings document rather than the built-in defaults."""
        return bool(self.settings.source)

    def policy_named(self, name: str) -> Policy | None:
        return self._by_name.get(name)

    @property
    def short_revision(self) -> str:
        return self.revision.removeprefix("sha256:")[:12]

    @property
    def rule_count(self) -> int:
        return sum(len(p.rules) for p in self.policies)
