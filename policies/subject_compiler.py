"""Compiles ``subjects`` blocks: name globs, Istio-form principals and trusted-label namespace selectors.

Part of the loader's semantic checks: a principal pattern that can never match ``<td>/ns/<ns>/sa/<sa>`` is an
error with a suggested fix, and a selector may only read label keys the settings trust.
"""

from __future__ import annotations

from typing import Any

from policies.compiled import PolicySettings
from policies.globs import GLOBSTAR, PathGlob
from policies.schema_readers import Reporter
from policies.subjects import NAME_LABEL, LabelRequirement, LabelSelector, SubjectPattern, Subjects


def _name_globs(values: list[str], path: str, field: str, report: Reporter) -> tuple[SubjectPattern, ...]:
    patterns = []
    for index, value in enumerate(values):
        if GLOBSTAR in value:
            report.error(f"{path}[{index}]", f'"**" is not allowed in {field} patterns; "*" already matches a name')
            continue
        if field == "serviceAccount" and value.count("/") > 1:
            report.error(f"{path}[{index}]", f'{value!r} must be "name" or "namespace/name"')
            continue
        patterns.append(SubjectPattern.compile(value, field))
    return tuple(patterns)


def _principals(values: list[str], path: str, report: Reporter) -> tuple[SubjectPattern, ...]:
    """Principals must be able to match ``<td>/ns/<ns>/sa/<sa>``; say how to fix one that cannot."""
    patterns = []
    for index, value in enumerate(values):
        where = f"{path}[{index}]"
        try:
            glob = PathGlob.compile(value)
        except ValueError as exc:
            report.error(where, str(exc))
            continue
        segments = value.split("/")
        can_match = glob.could_match_length(5) and glob.segment_could_be(1, "ns") and glob.segment_could_be(3, "sa")
        if not can_match:
            hint = _principal_hint(segments)
            report.error(
                where,
                f"{value!r} can never match a principal <trustDomain>/ns/<namespace>/sa/<serviceAccount>"
                f" (a * never spans a /){hint}",
            )
            continue
        patterns.append(SubjectPattern(glob, "principal"))
    return tuple(patterns)


def _principal_hint(segments: list[str]) -> str:
    if segments == ["*"]:
        return '; use "*/ns/*/sa/*" for every principal'
    if len(segments) == 4 and segments[1] == "ns":
        return f'; did you mean "{segments[0]}/ns/{segments[2]}/sa/{segments[3]}"?'
    if len(segments) == 3 and segments[1] == "ns":
        return f'; did you mean "{segments[0]}/ns/{segments[2]}/sa/*"?'
    return ""


def compile_subjects(
    spec: dict[str, Any] | None, path: str, report: Reporter, settings: PolicySettings
) -> Subjects | None:
    if spec is None:
        return None
    selector = None
    if "namespaceSelector" in spec:
        selector = _selector(spec["namespaceSelector"], f"{path}.namespaceSelector", report, settings)

    def names(key: str, field: str) -> tuple[SubjectPattern, ...] | None:
        return _name_globs(spec[key], f"{path}.{key}", field, report) if key in spec else None

    return Subjects(
        namespaces=names("namespaces", "namespace"),
        not_namespaces=names("notNamespaces", "namespace") or (),
        namespace_selector=selector,
        service_accounts=names("serviceAccounts", "serviceAccount"),
        not_service_accounts=names("notServiceAccounts", "serviceAccount") or (),
        principals=_principals(spec["principals"], f"{path}.principals", report) if "principals" in spec else None,
        not_principals=_principals(spec.get("notPrincipals", []), f"{path}.notPrincipals", report),
    )


def _selector(spec: dict[str, Any], path: str, report: Reporter, settings: PolicySettings) -> LabelSelector:
    requirements = []
    trusted = settings.trusted_namespace_label_keys

    def trusted_key(key: str, where: str) -> bool:
        if key == NAME_LABEL or key in trusted:
            return True
        report.error(where, f"label key {key!r} is not in settings.trustedNamespaceLabelKeys")
        return False

    for key, value in spec.get("matchLabels", {}).items():
        if trusted_key(key, f"{path}.matchLabels[{key!r}]"):
            requirements.append(LabelRequirement(key, "In", frozenset({value})))
    for index, expression in enumerate(spec.get("matchExpressions", [])):
        where = f"{path}.matchExpressions[{index}]"
        operator, values = expression["operator"], expression.get("values", [])
        if operator in ("In", "NotIn") and not values:
            report.error(f"{where}.values", f"operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            report.error(f"{where}.values", f"operator {operator} takes no values")
        if trusted_key(expression["key"], f"{where}.key"):
            requirements.append(LabelRequirement(expression["key"], operator, frozenset(values)))
    return LabelSelector(tuple(requirements))
