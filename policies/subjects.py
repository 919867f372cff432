"""Who a policy or rule is about: namespaces, a namespace label selector, service accounts and principals.

Fields AND together, entries of one list OR, and the ``not*`` lists subtract (policy-format.md §3 step 1).
Principals use Istio's ``<td>/ns/<ns>/sa/<sa>`` form with segment-aware globs; unlike Istio, a star never spans
a ``/``. Label selectors read only trusted label keys (enforced at load) plus ``kubernetes.io/metadata.name``,
which the API server sets and which is answered from the namespace name without asking the informer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from policies.context import Check, EvaluationContext
from policies.globs import NameGlob, NameSet, PathGlob

NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: frozenset[str]

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: also true when the label is absent

    def describe(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} ({', '.join(sorted(self.values))})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...]
    # Read per decision, so worked out once: whether any requirement reads a label the informer holds, and whether
    # any reads the name label (answered from the namespace name).
    needs_labels: bool = field(init=False, compare=False)
    _reads_name: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_labels", any(r.key != NAME_LABEL for r in self.requirements))
        object.__setattr__(self, "_reads_name", any(r.key == NAME_LABEL for r in self.requirements))

    def matches(self, ctx: EvaluationContext) -> bool:
        labels: Mapping[str, str] = ctx.labels() if self.needs_labels else {}
        if self._reads_name:  # the API server's name label always holds the name, whatever the informer says
            labels = {**labels, NAME_LABEL: ctx.caller.namespace}
        return all(r.holds(labels) for r in self.requirements)

    def describe(self) -> str:
        return ", ".join(r.describe() for r in self.requirements) or "(everything)"


@dataclass(frozen=True, slots=True)
class SubjectPattern:
    """One entry of a subjects list, matched against the part of the caller its field is about.

    ``field`` is ``namespace``, ``serviceAccount`` (a pattern with a ``/`` then matches ``namespace/name``) or
    ``principal``.
    """

    glob: NameGlob | PathGlob
    field: str

    @classmethod
    def compile(cls, pattern: str, field: str) -> SubjectPattern:
        if field == "principal" or (field == "serviceAccount" and "/" in pattern):
            return cls(PathGlob.compile(pattern), field)
        return cls(NameGlob.compile(pattern), field)

    @property
    def pattern(self) -> str:
        return self.glob.pattern

    def subject_of(self, ctx: EvaluationContext) -> str:
        """The caller text this pattern is matched against."""
        if self.field == "namespace":
            return ctx.caller.namespace
        if self.field == "principal":
            return ctx.principal
        return ctx.workload if isinstance(self.glob, PathGlob) else ctx.caller.service_account

    def matches(self, ctx: EvaluationContext) -> bool:
        return self.glob.matches(self.subject_of(ctx))


def _account_in(compiled: tuple[NameSet, tuple[PathGlob, ...]], ctx: EvaluationContext) -> bool:
    names, with_namespace = compiled
    return names.matches(ctx.caller.service_account) or any(p.matches(ctx.workload) for p in with_namespace)


def _patterns(patterns: tuple[SubjectPattern, ...]) -> str:
    return "[" + ", ".join(p.pattern for p in patterns) + "]"


@dataclass(frozen=True, slots=True)
class Subjects:
    namespaces: tuple[SubjectPattern, ...] | None = None
    not_namespaces: tuple[SubjectPattern, ...] = ()
    namespace_selector: LabelSelector | None = None
    service_accounts: tuple[SubjectPattern, ...] | None = None
    not_service_accounts: tuple[SubjectPattern, ...] = ()
    principals: tuple[SubjectPattern, ...] | None = None
    not_principals: tuple[SubjectPattern, ...] = ()
    # Compiled forms for the fast path (``matches``); ``check`` reads the patterns above for explanations.
    _namespaces: NameSet | None = field(init=False, compare=False, repr=False)
    _not_namespaces: NameSet | None = field(init=False, compare=False, repr=False)
    _accounts: tuple[NameSet, tuple[PathGlob, ...]] | None = field(init=False, compare=False, repr=False)
    _not_accounts: tuple[NameSet, tuple[PathGlob, ...]] | None = field(init=False, compare=False, repr=False)
    _principals: tuple[PathGlob, ...] | None = field(init=False, compare=False, repr=False)
    _not_principals: tuple[PathGlob, ...] | None = field(init=False, compare=False, repr=False)
    # No name condition at all (``namespaces: ['*']`` and nothing else but perhaps a selector): the static match
    # is true for every caller, which mesh-wide policies make the common case of a lookup.
    _every_name: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        def names(patterns: tuple[SubjectPattern, ...] | None) -> NameSet | None:
            return NameSet.compile(p.pattern for p in patterns) if patterns else None

        def accounts(patterns: tuple[SubjectPattern, ...] | None) -> tuple[NameSet, tuple[PathGlob, ...]] | None:
            if not patterns:
                return None
            plain = NameSet.compile(p.pattern for p in patterns if isinstance(p.glob, NameGlob))
            return plain, tuple(p.glob for p in patterns if isinstance(p.glob, PathGlob))

        def paths(patterns: tuple[SubjectPattern, ...] | None) -> tuple[PathGlob, ...] | None:
            return tuple(p.glob for p in patterns if isinstance(p.glob, PathGlob)) if patterns else None

        object.__setattr__(self, "_namespaces", names(self.namespaces))
        object.__setattr__(self, "_not_namespaces", names(self.not_namespaces))
        object.__setattr__(self, "_accounts", accounts(self.service_accounts))
        object.__setattr__(self, "_not_accounts", accounts(self.not_service_accounts))
        object.__setattr__(self, "_principals", paths(self.principals))
        object.__setattr__(self, "_not_principals", paths(self.not_principals))
        every_namespace = self._namespaces is None or self._namespaces.everything
        unconstrained = (
            self._not_namespaces,
            self._accounts,
            self._not_accounts,
            self._principals,
            self._not_principals,
        )
        object.__setattr__(self, "_every_name", every_namespace and all(c is None for c in unconstrained))

    @property
    def literal_namespaces(self) -> frozenset[str] | None:
        """The exact namespaces this can apply to, when every namespace pattern is literal (for indexing)."""
        if self.namespaces is None or not all(isinstance(p.glob, NameGlob) and p.glob.literal for p in self.namespaces):
            return None
        return frozenset(g.pattern for g in self.namespaces)

    @property
    def needs_labels(self) -> bool:
        return self.namespace_selector is not None and self.namespace_selector.needs_labels

    def namespace_matches(self, namespace: str) -> bool:
        """``namespaces`` and ``notNamespaces`` alone: they depend on the name only, so sets cache this."""
        if self._namespaces is not None and not self._namespaces.matches(namespace):
            return False
        return self._not_namespaces is None or not self._not_namespaces.matches(namespace)

    def matches(self, ctx: EvaluationContext) -> bool:
        """The fast path of ``check``: no explanation is built. Raises LabelsUnavailable like ``check``."""
        return self.static_matches(ctx) and self.dynamic_matches(ctx)

    def dynamic_matches(self, ctx: EvaluationContext) -> bool:
        """The part that depends on more than the caller's names: the namespace label selector."""
        return self.namespace_selector is None or self.namespace_selector.matches(ctx)

    def static_matches(self, ctx: EvaluationContext) -> bool:
        """Everything but the selector: a function of (namespace, service account) alone, so sets cache it."""
        if self._every_name:
            return True
        if not self.namespace_matches(ctx.caller.namespace):
            return False
        if self._accounts is not None and not _account_in(self._accounts, ctx):
            return False
        if self._not_accounts is not None and _account_in(self._not_accounts, ctx):
            return False
        if self._principals is not None and not any(p.matches(ctx.principal) for p in self._principals):
            return False
        return self._not_principals is None or not any(p.matches(ctx.principal) for p in self._not_principals)

    def check(self, ctx: EvaluationContext, prefix: str, *, exhaustive: bool = False) -> list[Check]:
        """The failed conditions (all conditions when ``exhaustive``); empty when the subjects match.

        Raises LabelsUnavailable when the selector needs labels that are not synced.
        """
        results: list[Check] = []
        for name, patterns, positive in (
            ("namespaces", self.namespaces, True),
            ("notNamespaces", self.not_namespaces, False),
            ("serviceAccounts", self.service_accounts, True),
            ("notServiceAccounts", self.not_service_accounts, False),
            ("principals", self.principals, True),
            ("notPrincipals", self.not_principals, False),
        ):
            if not patterns:
                continue
            hit = any(p.matches(ctx) for p in patterns)
            held = hit if positive else not hit
            if held and not exhaustive:
                continue
            expected = ("one of " if positive else "none of ") + _patterns(patterns)
            with_namespace = next((p for p in patterns if isinstance(p.glob, PathGlob)), patterns[0])
            actual = with_namespace.subject_of(ctx)
            results.append(Check(f"{prefix}subjects.{name}", held, expected, actual, None if held else "NOT_SUBJECT"))
            if not held and not exhaustive:
                return results
        if self.namespace_selector is not None:
            held = self.namespace_selector.matches(ctx)
            if exhaustive or not held:
                actual_labels = ctx.labels() if self.namespace_selector.needs_labels else {}
                shown = ", ".join(f"{k}={v}" for k, v in sorted(actual_labels.items())) or "(no labels)"
                results.append(
                    Check(
                        f"{prefix}subjects.namespaceSelector",
                        held,
                        self.namespace_selector.describe(),
                        f"namespace {ctx.caller.namespace}: {shown}",
                        None if held else "NOT_SUBJECT",
                    )
                )
        return results
