"""The strict schema: every field of every kind, checked on the YAML node tree with positions.

Unknown fields, duplicate keys, wrong types and bad enum values are all errors (a typo such as ``notNamespace``
must not silently widen a policy). The reader converts scalars (durations to seconds, times to aware datetimes)
and records the position of every field path so the semantic checks in ``loader.py`` can locate their errors too.
Each check reports and returns ``INVALID`` instead of raising, so one pass finds every problem.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import yaml

from policies.durations import parse_duration
from policies.problems import Problem, Severity
from policies.yaml_source import position

API_VERSION = "meshsigner.io/v1alpha1"
INVALID: Any = object()  # returned by a spec after it reported a problem

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_RULE_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


class Reporter:
    """Collects problems for one document and remembers where each field path sits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.positions: dict[str, tuple[int, int]] = {}

    def remember(self, path: str, node: yaml.Node) -> None:
        self.positions[path] = position(node)

    def error(self, path: str, message: str, node: yaml.Node | None = None) -> None:
        self.add(path, message, node, Severity.ERROR)

    def warn(self, path: str, message: str, node: yaml.Node | None = None) -> None:
        self.add(path, message, node, Severity.WARNING)

    def add(self, path: str, message: str, node: yaml.Node | None, severity: Severity) -> None:
        line, column = position(node) if node is not None else self.locate(path)
        self.problems.append(Problem(self.file, line, column, path, message, severity))

    def locate(self, path: str) -> tuple[int, int]:
        """Position of ``path``, or of its nearest recorded parent."""
        probe = path
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return self.positions.get("", (1, 1))


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        _STR_TAG: "a string",
        _INT_TAG: "an integer",
        _BOOL_TAG: "a boolean",
        "tag:yaml.org,2002:null": "null",
        "tag:yaml.org,2002:float": "a number",
        _TIMESTAMP_TAG: "a timestamp",
    }.get(node.tag, f"a {node.tag} value")


class Spec:
    what = "a value"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        raise NotImplementedError

    def mismatch(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        hint = " (quote it)" if isinstance(node, yaml.ScalarNode) and self.what == "a string" else ""
        report.error(path, f"must be {self.what}, got {_describe(node)}{hint}", node)
        return INVALID


@dataclass
class Str(Spec):
    enum: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    pattern_hint: str = ""
    what: str = "a string"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            return self.mismatch(node, path, report)
        value = node.value
        if self.enum and value not in self.enum:
            report.error(path, f"must be one of {', '.join(self.enum)}, got {value!r}", node)
            return INVALID
        if not self.enum and value == "":
            report.error(path, "must not be empty", node)
            return INVALID
        if self.pattern is not None and not self.pattern.fullmatch(value):
            report.error(path, f"{value!r} is not {self.pattern_hint}", node)
            return INVALID
        return value


@dataclass
class Int(Spec):
    minimum: int | None = None
    maximum: int | None = None
    what: str = "an integer"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT_TAG:
            return self.mismatch(node, path, report)
        value = int(yaml.constructor.SafeConstructor().construct_yaml_int(node))
        if self.minimum is not None and value < self.minimum:
            report.error(path, f"must be at least {self.minimum}, got {value}", node)
            return INVALID
        if self.maximum is not None and value > self.maximum:
            report.error(path, f"must be at most {self.maximum}, got {value}", node)
            return INVALID
        return value


@dataclass
class Bool(Spec):
    what: str = "true or false"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL_TAG:
            return self.mismatch(node, path, report)
        return node.value.lower() in ("true", "yes", "on", "y")


@dataclass
class Duration(Spec):
    what: str = "a duration string such as 24h, 10m or 7d"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            return self.mismatch(node, path, report)
        try:
            return parse_duration(node.value)
        except ValueError as exc:
            report.error(path, str(exc), node)
            return INVALID


@dataclass
class Time(Spec):
    what: str = 'an RFC 3339 time with a zone, such as "2026-12-31T00:00:00Z"'

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR_TAG, _TIMESTAMP_TAG):
            return self.mismatch(node, path, report)
        try:
            value = parse_time(node.value)
        except ValueError as exc:
            report.error(path, str(exc), node)
            return INVALID
        return value


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp that names its zone. Raises ValueError otherwise."""
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2026-12-31T00:00:00Z") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        raise ValueError(f"{text!r} needs a time of day and a zone")
    if value.tzinfo is None:
        raise ValueError(f"{text!r} must name its zone (append Z for UTC)")
    return value


@dataclass
class List(Spec):
    item: Spec
    non_empty: bool = False
    unique: bool = True
    what: str = "a list"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            return self.mismatch(node, path, report)
        if self.non_empty and not node.value:
            report.error(path, "must not be empty (omit the field instead)", node)
            return INVALID
        values, seen, ok = [], set(), True
        for index, child in enumerate(node.value):
            child_path = f"{path}[{index}]"
            report.remember(child_path, child)
            value = self.item.read(child, child_path, report)
            if value is INVALID:
                ok = False
                continue
            if self.unique and isinstance(value, str):
                if value in seen:
                    report.warn(child_path, f"{value!r} is listed twice", child)
                seen.add(value)
            values.append(value)
        return values if ok else INVALID


@dataclass
class StrMap(Spec):
    value: Spec = field(default_factory=Str)
    what: str = "a mapping of strings"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self.mismatch(node, path, report)
        result: dict[str, Any] = {}
        ok = True
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                report.error(path, f"keys must be strings, got {_describe(key_node)}", key_node)
                ok = False
                continue
            key = key_node.value
            child_path = f"{path}[{key!r}]"
            report.remember(child_path, key_node)
            if key in result:
                report.error(child_path, "duplicate key", key_node)
                ok = False
                continue
            value = self.value.read(value_node, child_path, report)
            ok = ok and value is not INVALID
            result[key] = value
        return result if ok else INVALID


@dataclass
class Field:
    spec: Spec
    required: bool = False


@dataclass
class Obj(Spec):
    fields: dict[str, Field]
    what: str = "a mapping"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self.mismatch(node, path, report)
        result: dict[str, Any] = {}
        ok = True
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child_path = f"{path}.{key}" if path else str(key)
            if key not in self.fields:
                close = difflib.get_close_matches(str(key), self.fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(self.fields))
                report.error(child_path, f"unknown field {key!r} ({hint})", key_node)
                ok = False
                continue
            if key in result:
                report.error(child_path, "duplicate key", key_node)
                ok = False
                continue
            report.remember(child_path, key_node)
            value = self.fields[key].spec.read(value_node, child_path, report)
            ok = ok and value is not INVALID
            result[key] = value
        for name, spec_field in self.fields.items():
            if spec_field.required and name not in result:
                report.error(f"{path}.{name}" if path else name, "required field is missing", node)
                ok = False
        return result if ok else INVALID


@dataclass
class WorkloadRef(Spec):
    """``ns/sa`` as a string, or ``{namespace, serviceAccount}``."""

    what: str = 'a "namespace/serviceAccount" string or a mapping with namespace and serviceAccount'

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if isinstance(node, yaml.MappingNode):
            value = Obj({"namespace": Field(NAME, True), "serviceAccount": Field(NAME, True)}).read(node, path, report)
            return value if value is INVALID else f"{value['namespace']}/{value['serviceAccount']}"
        return NODE_ACCOUNT.read(node, path, report)


NAME = Str(pattern=_NAME, pattern_hint="a Kubernetes name (lowercase letters, digits, '-' and '.')")
RULE_NAME = Str(pattern=_RULE_NAME, pattern_hint="a rule name (letters, digits, '-', '_' and '.')")
TRUST_DOMAIN = Str(pattern=_TRUST_DOMAIN, pattern_hint="a trust domain (lowercase [a-z0-9._-])")
NODE_ACCOUNT = Str(
    pattern=re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?"),
    pattern_hint='"namespace/serviceAccount"',
)
STRINGS = List(Str())
NAMES_OR_GLOBS = List(Str(), non_empty=True)

METADATA = Obj(
    {
        "name": Field(NAME, required=True),
        "namespace": Field(NAME),
        "annotations": Field(StrMap()),
        "labels": Field(StrMap()),
    }
)

DURATION_RANGE = Obj(
    {
        "default": Field(Duration()),
        "min": Field(Duration()),
        "max": Field(Duration()),
        "onExceed": Field(Str(enum=("Clamp", "Deny"))),
        "onBelow": Field(Str(enum=("Deny", "Raise"))),
    }
)
LIMIT_DURATION = Obj(
    {
        "min": Field(Duration()),
        "max": Field(Duration()),
        "onExceed": Field(Str(enum=("Clamp", "Deny"))),
        "onBelow": Field(Str(enum=("Deny", "Raise"))),
    }
)
KEY = Obj({"algorithms": Field(List(Str(), non_empty=True)), "minRSABits": Field(Int(minimum=1024, maximum=16384))})

SETTINGS_SPEC = Obj(
    {
        "trustDomain": Field(TRUST_DOMAIN),
        "trustDomainAliases": Field(List(TRUST_DOMAIN)),
        "clusterDomain": Field(Str()),
        "defaultDecision": Field(Str(enum=("Deny", "IstioCompatible"))),
        "duration": Field(
            Obj(
                {
                    "default": Field(Duration()),
                    "min": Field(Duration()),
                    "max": Field(Duration()),
                    "nonPositive": Field(Str(enum=("UseDefault", "Deny"))),
                }
            )
        ),
        "caValidity": Field(Obj({"onExceed": Field(Str(enum=("Clamp", "Deny")))})),
        "san": Field(
            Obj(
                {
                    "maxURIs": Field(Int(minimum=1, maximum=16)),
                    "onMissingURI": Field(Str(enum=("Deny", "UseCallerIdentity"))),
                }
            )
        ),
        "impersonation": Field(Obj({"nodeServiceAccounts": Field(List(NODE_ACCOUNT))})),
        "trustedNamespaceLabelKeys": Field(STRINGS),
        "clientMessages": Field(Str(enum=("Detailed", "Minimal"))),
        "key": Field(KEY),
        "usages": Field(List(Str(), non_empty=True)),
        "shadowPolicySet": Field(STRINGS),
    }
)

LABEL_SELECTOR = Obj(
    {
        "matchLabels": Field(StrMap()),
        "matchExpressions": Field(
            List(
                Obj(
                    {
                        "key": Field(Str(), required=True),
                        "operator": Field(Str(enum=("In", "NotIn", "Exists", "DoesNotExist")), required=True),
                        "values": Field(STRINGS),
                    }
                )
            )
        ),
    }
)

SUBJECTS = Obj(
    {
        "namespaces": Field(NAMES_OR_GLOBS),
        "notNamespaces": Field(STRINGS),
        "namespaceSelector": Field(LABEL_SELECTOR),
        "serviceAccounts": Field(NAMES_OR_GLOBS),
        "notServiceAccounts": Field(STRINGS),
        "principals": Field(NAMES_OR_GLOBS),
        "notPrincipals": Field(STRINGS),
    }
)

RULE = Obj(
    {
        "name": Field(RULE_NAME, required=True),
        "effect": Field(Str(enum=("Allow", "Deny")), required=True),
        "description": Field(Str()),
        "subjects": Field(SUBJECTS),
        "identities": Field(List(Str(), non_empty=True)),
        "trustDomains": Field(List(TRUST_DOMAIN, non_empty=True)),
        "dnsNames": Field(STRINGS),
        "allowWildcardDNSNames": Field(Bool()),
        "allowCrossNamespace": Field(Bool()),
        "duration": Field(DURATION_RANGE),
        "key": Field(KEY),
        "usages": Field(STRINGS),
        "expiresAt": Field(Time()),
        "ticket": Field(Str()),
        "message": Field(Str()),
        "when": Field(STRINGS),
    }
)

POLICY_SPEC = Obj(
    {
        "mode": Field(Str(enum=("Enforce", "Audit", "Disabled"))),
        "priority": Field(Int(minimum=-1_000_000, maximum=1_000_000)),
        "description": Field(Str()),
        "expiresAt": Field(Time()),
        "ticket": Field(Str()),
        "subjects": Field(SUBJECTS),
        "duration": Field(DURATION_RANGE),
        "rules": Field(List(RULE)),
        "limits": Field(Obj({"duration": Field(LIMIT_DURATION), "key": Field(KEY)})),
    }
)

TEST_CALLER = Obj(
    {
        "trustDomain": Field(TRUST_DOMAIN),
        "namespace": Field(NAME, required=True),
        "serviceAccount": Field(NAME, required=True),
        "podName": Field(Str()),
        "podUID": Field(Str()),
        "impersonating": Field(WorkloadRef()),
    }
)
TEST_REQUEST = Obj(
    {
        "uris": Field(STRINGS),
        "dnsNames": Field(STRINGS),
        "ipAddresses": Field(STRINGS),
        "emailAddresses": Field(STRINGS),
        "otherSANTypes": Field(STRINGS),
        "commonName": Field(Str()),
        "isCA": Field(Bool()),
        "key": Field(Str()),
        "usages": Field(STRINGS),
        "extensions": Field(STRINGS),
        "validitySeconds": Field(Int()),
    }
)
TEST_EXPECT = Obj(
    {
        "decision": Field(Str(enum=("Allow", "Deny", "ALLOW", "DENY")), required=True),
        "reason": Field(Str()),
        "reasons": Field(STRINGS),
        "subReason": Field(Str()),
        "outcome": Field(Str()),
        "matched": Field(Str()),
        "denyRules": Field(STRINGS),
        "durationSeconds": Field(Int()),
        "notAfter": Field(Time()),
        "flags": Field(STRINGS),
        "uris": Field(STRINGS),
        "dnsNames": Field(STRINGS),
        "auditFindings": Field(STRINGS),
        "message": Field(Str()),
    }
)
TEST_CA = Obj({"notAfter": Field(Time(), required=True)})
TEST_SPEC = Obj(
    {
        "policies": Field(List(Str(), non_empty=True), required=True),
        "trustDomain": Field(TRUST_DOMAIN),
        "clock": Field(Time()),
        "ca": Field(TEST_CA),
        "expectLoadErrors": Field(STRINGS),
        "cases": Field(
            List(
                Obj(
                    {
                        "name": Field(Str(), required=True),
                        "clock": Field(Time()),
                        "ca": Field(TEST_CA),
                        "caller": Field(TEST_CALLER, required=True),
                        "request": Field(TEST_REQUEST),
                        "expect": Field(TEST_EXPECT, required=True),
                    }
                )
            )
        ),
    }
)

KIND_SPECS: dict[str, Spec] = {"PolicySettings": SETTINGS_SPEC, "IdentityPolicy": POLICY_SPEC, "PolicyTest": TEST_SPEC}


def read_document(node: yaml.Node, report: Reporter) -> tuple[str, dict[str, Any]] | None:
    """Check one document against the schema of its kind; returns (kind, fields) or None after reporting."""
    report.remember("", node)
    if not isinstance(node, yaml.MappingNode):
        report.error("", f"a document must be a mapping, got {_describe(node)}", node)
        return None
    kinds = "|".join(KIND_SPECS)
    envelope = Obj(
        {
            "apiVersion": Field(Str(enum=(API_VERSION,)), required=True),
            "kind": Field(Str(enum=tuple(KIND_SPECS)), required=True),
            "metadata": Field(METADATA, required=True),
            "spec": Field(_Deferred(), required=True),
        }
    )
    # The envelope first (spec is kept as a node), then the spec against the schema of its kind.
    spec_node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "spec"), None)
    head = envelope.read(node, "", report)
    if head is INVALID:
        if spec_node is not None and _kind_of(node) in KIND_SPECS:
            KIND_SPECS[_kind_of(node)].read(spec_node, "spec", report)
        if _kind_of(node) not in KIND_SPECS and not report.problems:
            report.error("kind", f"must be one of {kinds}", node)
        return None
    spec = KIND_SPECS[head["kind"]].read(spec_node, "spec", report)
    if spec is INVALID:
        return None
    return head["kind"], {"metadata": head["metadata"], "spec": spec}


def _kind_of(node: yaml.MappingNode) -> str | None:
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "kind" and isinstance(value, yaml.ScalarNode):
            return str(value.value)
    return None


class _Deferred(Spec):
    """Accepts any node; the spec is read against its kind's schema afterwards."""

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        return node
