"""The strict schema readers: typed fields checked on the YAML node tree with positions.

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

from clocks.durations import MAX_POLICY_DURATION, describe_duration, parse_duration
from policies.problems import Problem, Severity
from policies.yaml_source import position

INVALID: Any = object()  # returned by a spec after it reported a problem

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class Reporter:
    """Collects problems for one document and remembers where each field path sits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        # The node, not its position: almost no path is ever reported, so (line, column) is read only when one is.
        self.positions: dict[str, yaml.Node] = {}

    def remember(self, path: str, node: yaml.Node) -> None:
        self.positions[path] = node

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
                return position(self.positions[probe])
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        root = self.positions.get("")
        return position(root) if root is not None else (1, 1)


def describe_node(node: yaml.Node) -> str:
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
        report.error(path, f"must be {self.what}, got {describe_node(node)}{hint}", node)
        return INVALID


@dataclass
class Str(Spec):
    enum: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    pattern_hint: str = ""
    what: str = "a string"
    max_length: int | None = None  # also bounds the cost of the CRD's validation rules that read the field

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            return self.mismatch(node, path, report)
        value = node.value
        if self.max_length is not None and len(value) > self.max_length:
            report.error(path, f"is {len(value)} characters long; at most {self.max_length}", node)
            return INVALID
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
    """A policy duration, at most ``MAX_POLICY_DURATION`` (10 years): larger values can only be typos, and
    adding one to the clock would overflow a datetime while a request is being decided."""

    what: str = "a duration string such as 24h, 10m or 7d"

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            return self.mismatch(node, path, report)
        try:
            value = parse_duration(node.value)
        except ValueError as exc:
            report.error(path, str(exc), node)
            return INVALID
        if value > MAX_POLICY_DURATION:
            longest = describe_duration(MAX_POLICY_DURATION)
            report.error(path, f"{node.value} exceeds the longest supported duration {longest} (10 years)", node)
            return INVALID
        return value


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
    max_items: int | None = None  # also bounds the cost of the CRD's validation rules
    key: str | None = None  # items are mappings unique by this field (a CRD list-map); the compiler checks it

    def read(self, node: yaml.Node, path: str, report: Reporter) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            return self.mismatch(node, path, report)
        if self.non_empty and not node.value:
            report.error(path, "must not be empty (omit the field instead)", node)
            return INVALID
        if self.max_items is not None and len(node.value) > self.max_items:
            report.error(path, f"has {len(node.value)} entries; at most {self.max_items}", node)
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
                report.error(path, f"keys must be strings, got {describe_node(key_node)}", key_node)
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
    doc: str = ""  # one line for `kubectl explain` (the generated CRDs carry it as the description)


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
            if key is not None and key_node.tag != _STR_TAG:
                # A tagged or non-string key (!x max, 1, true) is never a field name; rejecting it also keeps the
                # result the same under PyYAML and libyaml, which tokenise odd tags differently.
                report.error(child_path, f"field names must be plain strings, got {describe_node(key_node)}", key_node)
                ok = False
                continue
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
