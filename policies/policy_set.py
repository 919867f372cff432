"""An immutable, validated policy set: the unit that is loaded, swapped and identified by its revision."""

from __future__ import annotations

from collections.abc import Sequence

from policies.compiler import istio_compatible_rule
from policies.documents import Mode, Policy, Rule, Settings
from policies.precheck import PrecheckSettings
from policies.problems import Problem

_CANDIDATE_CACHE_LIMIT = 4096


class PolicySet:
    """Settings plus policies in step 4's order, indexed by namespace so a decision reads only what can apply.

    A policy whose ``subjects.namespaces`` are all literal is indexed under those names; every other policy is
    a candidate for every namespace. The per-namespace merge is cached (bounded) because the set never changes.
    """

    def __init__(
        self,
        settings: Settings,
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
        self.fallback_rule: Rule | None = (
            istio_compatible_rule(settings) if settings.default_decision == "IstioCompatible" else None
        )
        self.precheck_settings = PrecheckSettings(
            primary_trust_domain=settings.trust_domain,
            trust_domain_aliases=settings.trust_domain_aliases,
            max_uris=settings.max_uris,
            stamp_caller_identity_when_missing=settings.on_missing_uri == "UseCallerIdentity",
        )
        self.needs_namespace_labels = any(p.needs_labels for p in self.policies if p.mode is not Mode.DISABLED)

    def candidates(self, namespace: str) -> tuple[Policy, ...]:
        """Enforce- and Audit-mode policies that may apply to ``namespace``, in step 4's order."""
        cached = self._candidates.get(namespace)
        if cached is None:
            positions = sorted({*self._everywhere, *self._by_namespace.get(namespace, ())})
            cached = tuple(self.policies[p] for p in positions)
            if len(self._candidates) >= _CANDIDATE_CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[namespace] = cached
        return cached

    @property
    def short_revision(self) -> str:
        return self.revision.removeprefix("sha256:")[:12]

    @property
    def rule_count(self) -> int:
        return sum(len(p.rules) for p in self.policies)
