"""CEL ``when`` conditions on rules: compiled and bounded at load, evaluated per decision.

The evaluator is ``cel-expr-python``, the CEL maintainers' Python binding of cel-cpp: it type-checks at compile
time against the variables declared here (a typo such as ``caller.namespce`` or a non-boolean result is a load
error), and evaluates in C++. It has no runtime cost budget, so the bound is made at load instead: an expression
is at most ``MAX_EXPRESSION_LENGTH`` code points and ``MAX_AST_NODES`` nodes, at most ``MAX_AST_DEPTH`` deep, and
its estimated cost (every node once, times ``MAX_LIST_ITEMS`` per enclosing comprehension over a variable, or the
literal's size over a literal list) is at most ``MAX_COST``. At evaluation the inputs are capped to match
(``MAX_LIST_ITEMS`` entries per list, ``MAX_STRING_LENGTH`` per string), so the estimate holds.

Variables (all always bound; absent values are empty strings):

- ``caller.trustDomain``, ``caller.namespace``, ``caller.serviceAccount``, ``caller.principal``
  (``<td>/ns/<ns>/sa/<sa>``), ``caller.spiffeID``, ``caller.podName``, ``caller.podUID``, ``caller.nodePrincipal``
  (the impersonating node account ``ns/sa``): ``string``.
- ``request.uris``, ``request.dnsNames``, ``request.usages``: ``list(string)``; ``request.key``: ``string``
  (``ECDSA-P256``, ``RSA-2048`` ...); ``request.validitySeconds``: ``int`` (as requested, may be 0).
- ``namespaceLabels``: ``map(string, string)``, the caller namespace's labels restricted to
  ``settings.trustedNamespaceLabelKeys`` (read only when the expression names it).
- ``now``: ``timestamp``, the decision time.

A condition that does not evaluate to a boolean (a missing map key, an input over the caps, an overflow) is an
error, never false: the rule is then treated as possibly matching, which denies (see ``rule_checks``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel_expr_python.cel as cel

from policies.compile_once import CompileOnce

MAX_EXPRESSION_LENGTH = 1024
MAX_AST_NODES = 400
MAX_AST_DEPTH = 48
MAX_COST = 10_000
MAX_LIST_ITEMS = 64
MAX_STRING_LENGTH = 4096
MAX_CONDITIONS_PER_RULE = 8

_T = cel.Type
VARIABLE_TYPES: dict[str, Any] = {
    **{
        f"caller.{name}": _T.STRING
        for name in (
            "trustDomain",
            "namespace",
            "serviceAccount",
            "principal",
            "spiffeID",
            "podName",
            "podUID",
            "nodePrincipal",
        )
    },
    "request.uris": _T.List(_T.STRING),
    "request.dnsNames": _T.List(_T.STRING),
    "request.usages": _T.List(_T.STRING),
    "request.key": _T.STRING,
    "request.validitySeconds": _T.INT,
    "namespaceLabels": _T.Map(_T.STRING, _T.STRING),
    "now": _T.TIMESTAMP,
}
LABELS_VARIABLE = "namespaceLabels"


class ConditionError(ValueError):
    """The expression cannot be used; the message says why (without the engine's status prefix)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled ``when`` expression. Compares by its text."""

    text: str
    variables: frozenset[str]  # the declared variables it reads
    cost: int  # the load-time estimate (see the module docstring)
    program: Any = field(compare=False, repr=False)

    @property
    def needs_labels(self) -> bool:
        return LABELS_VARIABLE in self.variables

    def evaluate(self, bindings: Mapping[str, object]) -> bool | str:
        """True or False, or the error text when it does not evaluate to a boolean."""
        try:
            value = self.program.eval(data={name: bindings[name] for name in self.variables})
            result = value.value()
        except Exception as exc:  # the binding raises on values it cannot convert; never let it escape
            return f"evaluation failed: {exc}"
        if isinstance(result, bool):
            return result
        return _clean(str(result)) if value.type() == _T.ERROR else f"returned {value.type().name()}, not a boolean"


class ConditionCompiler:
    """Compiles ``when`` expressions against the declared variables. One per load: the CEL environment costs a
    few milliseconds to build, so it is made on the first condition; and each distinct text is compiled once
    (about a millisecond each; large sets repeat the same conditions across many policies)."""

    def __init__(self) -> None:
        # the compiling function lives on an object of its own: a bound method of this one, kept by CompileOnce,
        # would make every load leave a reference cycle for the collector
        self._once = CompileOnce(_CelCompiler().compile, ConditionError)

    def compile(self, text: str) -> Condition:
        """Raises ConditionError with a message naming the position and the problem."""
        return self._once(text)  # immutable, and evaluations keep their results per rule, so rules can share it


class _CelCompiler:
    """One text to a checked Condition; the CEL environment is built on first use."""

    def __init__(self) -> None:
        self._env: Any = None

    def compile(self, text: str) -> Condition:
        if len(text) > MAX_EXPRESSION_LENGTH:
            raise ConditionError(f"is {len(text)} characters long; the limit is {MAX_EXPRESSION_LENGTH}")
        if self._env is None:
            self._env = cel.NewEnv(variables=VARIABLE_TYPES)
        try:
            program = self._env.compile(text)
        except Exception as exc:  # cel-cpp reports parse and type errors as RuntimeError with a status prefix
            raise ConditionError(_clean(str(exc))) from None
        if program.return_type() != _T.BOOL:
            raise ConditionError(f"must be a boolean condition, it returns {program.return_type().name()}")
        try:
            shape = _shape(program.serialize())
        except (ValueError, IndexError) as exc:  # a binding whose format changed: refuse rather than run unbounded
            raise ConditionError(f"cannot analyse the compiled expression ({exc})") from None
        if shape.nodes > MAX_AST_NODES:
            raise ConditionError(f"has {shape.nodes} expression nodes; the limit is {MAX_AST_NODES}")
        if shape.depth > MAX_AST_DEPTH:
            raise ConditionError(f"nests {shape.depth} levels deep; the limit is {MAX_AST_DEPTH}")
        if shape.cost > MAX_COST:
            raise ConditionError(
                f"estimated cost {shape.cost} exceeds {MAX_COST} (each comprehension over a variable counts "
                f"{MAX_LIST_ITEMS} iterations; avoid nesting them)"
            )
        variables = frozenset(name for name in shape.identifiers if name in VARIABLE_TYPES)
        return Condition(text, variables, shape.cost, program)


def bindings_for(
    *,
    caller: Callable[[str], str],
    uris: tuple[str, ...],
    dns_names: tuple[str, ...],
    usages: tuple[str, ...],
    key: str,
    validity_seconds: int,
    now: datetime,
    labels: Callable[[], Mapping[str, str]],
    wanted: frozenset[str],
) -> dict[str, object] | str:
    """The values of the ``wanted`` variables, or why the inputs exceed the caps the cost estimate assumes.
    ``caller`` gives a ``caller.*`` field by name; ``labels`` is called only when ``namespaceLabels`` is wanted
    (it may raise LabelsUnavailable)."""
    values: dict[str, object] = {}
    for name in wanted:
        if name.startswith("caller."):
            values[name] = caller(name[7:])
        elif name == "request.key":
            values[name] = key
        elif name == "request.validitySeconds":
            values[name] = validity_seconds
        elif name == "now":
            values[name] = now
        else:
            collection: list[str] | dict[str, str] = (
                list(uris)
                if name == "request.uris"
                else list(dns_names)
                if name == "request.dnsNames"
                else list(usages)
                if name == "request.usages"
                else dict(labels())
            )
            too_large = _over_caps(name, collection)
            if too_large:
                return f"inputs exceed the evaluation caps: {too_large}"
            values[name] = collection
    return values


def _over_caps(name: str, collection: list[str] | dict[str, str]) -> str | None:
    """Only lists and maps can grow with the request; the other inputs are names and fixed vocabulary."""
    if len(collection) > MAX_LIST_ITEMS:
        return f"{name} has {len(collection)} entries (at most {MAX_LIST_ITEMS})"
    texts = [*collection, *collection.values()] if isinstance(collection, dict) else collection
    longest = max(map(len, texts), default=0)
    if longest > MAX_STRING_LENGTH:
        return f"{name} holds a string of {longest} characters (at most {MAX_STRING_LENGTH})"
    return None


def _clean(message: str) -> str:
    """cel-cpp's ``INVALID_ARGUMENT: ERROR: <input>:1:13: text\\n | source\\n | ...^`` as ``1:13: text``."""
    first = message.strip().splitlines()[0] if message.strip() else message
    for prefix in ("INVALID_ARGUMENT: ", "CANCELLED: ", "ERROR: ", "<input>:"):
        first = first.removeprefix(prefix)
    for suffix in (" [INVALID_ARGUMENT]", " [CANCELLED]", " (in container '')"):
        first = first.removesuffix(suffix)
    return first.strip()


# --- the compiled expression's shape, read from its serialized form (cel.expr.CheckedExpr in a wrapper) ---
# Wrapper field 2 holds the CheckedExpr; its field 4 is the Expr. Expr: 4 ident, 5 select, 6 call, 7 list,
# 8 struct, 9 comprehension. Comprehension: 2 iter_range, 4 accu_init, 5 loop_condition, 6 loop_step, 7 result.


@dataclass
class _Shape:
    nodes: int = 0
    depth: int = 0
    cost: int = 0
    identifiers: set[str] = field(default_factory=set)


def _shape(serialized: bytes) -> _Shape:
    checked = _only(serialized, 2)
    expr = _only(checked, 4)
    shape = _Shape()
    _walk(expr, 1, 1, shape)
    return shape


def _walk(expr: bytes, depth: int, weight: int, shape: _Shape) -> None:
    shape.nodes += 1
    shape.depth = max(shape.depth, depth)
    shape.cost += weight
    if shape.nodes > MAX_AST_NODES or shape.depth > MAX_AST_DEPTH or shape.cost > MAX_COST:
        return  # already over a limit: stop walking, the caller reports it
    for number, value in _fields(expr):
        if not isinstance(value, bytes):
            continue
        if number == 4:
            shape.identifiers.add(_text(value, 1))
        elif number == 5:  # select: operand, field; a qualified variable such as caller.namespace is one name
            operand = _first(value, 1)
            name = _qualified(value)
            if name is not None and name in VARIABLE_TYPES:
                shape.identifiers.add(name)
            elif operand is not None:
                _walk(operand, depth + 1, weight, shape)
        elif number == 6:  # call: target, function, args
            for inner_number, inner in _fields(value):
                if inner_number in (1, 3) and isinstance(inner, bytes):
                    _walk(inner, depth + 1, weight, shape)
        elif number == 7:  # list literal
            for inner_number, inner in _fields(value):
                if inner_number == 1 and isinstance(inner, bytes):
                    _walk(inner, depth + 1, weight, shape)
        elif number == 8:  # map or message literal: entries (4 = value, 3 = map key)
            for inner_number, entry in _fields(value):
                if inner_number == 2 and isinstance(entry, bytes):
                    for part_number, part in _fields(entry):
                        if part_number in (3, 4) and isinstance(part, bytes):
                            _walk(part, depth + 1, weight, shape)
        elif number == 9:
            _comprehension(value, depth, weight, shape)


def _comprehension(value: bytes, depth: int, weight: int, shape: _Shape) -> None:
    iter_range = _first(value, 2)
    iterations = MAX_LIST_ITEMS
    if iter_range is not None:
        literal = _first(iter_range, 7)
        if literal is not None:
            iterations = sum(1 for number, _ in _fields(literal) if number == 1)
        _walk(iter_range, depth + 1, weight, shape)
    for number, part in _fields(value):
        if not isinstance(part, bytes):
            continue
        if number in (5, 6):  # loop condition and step run once per iteration
            _walk(part, depth + 1, weight * max(iterations, 1), shape)
        elif number in (4, 7):
            _walk(part, depth + 1, weight, shape)


def _qualified(select: bytes) -> str | None:
    """``a.b.c`` for a chain of selects over an identifier, else None."""
    names = [_text(select, 2)]
    operand = _first(select, 1)
    while operand is not None:
        ident = _first(operand, 4)
        if ident is not None:
            return ".".join([_text(ident, 1), *reversed(names)])
        inner = _first(operand, 5)
        if inner is None:
            return None
        names.append(_text(inner, 2))
        operand = _first(inner, 1)
    return None


def _fields(message: bytes) -> Iterator[tuple[int, bytes | int]]:
    """The (field number, value) pairs of a protobuf message: varints as int, length-delimited as bytes."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(message, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(message, position)
            if position + length > len(message):
                raise ValueError("truncated field")
            yield number, message[position : position + length]
            position += length
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, position


def _first(message: bytes, number: int) -> bytes | None:
    return next((v for n, v in _fields(message) if n == number and isinstance(v, bytes)), None)


def _only(message: bytes, number: int) -> bytes:
    found = _first(message, number)
    if found is None:
        raise ValueError(f"field {number} missing")
    return found


def _text(message: bytes, number: int) -> str:
    found = _first(message, number)
    return found.decode("utf-8", "replace") if found is not None else ""
