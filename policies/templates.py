"""Identity and DNS templates: ``spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}/shard/*``.

A template is rendered per request with the caller's values and then matched as a segment-aware glob. Values are
substituted literally and never globbed: a value holding a separator, a star or a character the target syntax
forbids makes the rule not match (policy-format.md §2.2). Stars written in the template are carried through
rendering as a NUL marker, which no substituted value may contain, so a value can never inject a glob.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from policies.compile_once import CompileOnce
from policies.globs import GLOBSTAR, match_pieces
from policies.spiffe import InvalidSpiffeID, SpiffeID, parse_spiffe_id

VARIABLES = frozenset({"trustDomain", "namespace", "serviceAccount", "clusterDomain", "podName", "podUID"})
LABEL_PREFIX = "nsLabel:"
_STAR = "\x00"
_TOKEN = re.compile(r"\{([^{}]*)\}")
_DNS_VALUE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
# Only these may fill several DNS labels; any other value must be one label, or it could reach into another
# name's zone (service account "api.payments" in {serviceAccount}.svc would claim the payments service).
_MULTI_LABEL_DNS_VARIABLES = frozenset({"trustDomain", "clusterDomain"})
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SPIFFE_PREFIX = "spiffe://"

Lookup = Callable[[str], "str | None"]
ValueCheck = Callable[[str, str], bool]  # (variable name, value) -> usable
_RENDER_CACHE_LIMIT = 4096
Rendered = tuple[tuple[str, ...], ...]
# An identity template rendered for one caller: its segments as glob pieces, and the same segments as plain text
# when no star is left (then a match is one tuple comparison).
RenderedIdentity = tuple[Rendered, "tuple[str, ...] | None"]
Shaped = TypeVar("Shaped")


class TemplateError(ValueError):
    """The template can never render a valid value; the message says why."""


def _parse(text: str, trusted_label_keys: frozenset[str]) -> tuple[tuple[bool, str], ...]:
    """Split into (is_variable, text) parts; stars in literal parts become the NUL marker."""
    parts: list[tuple[bool, str]] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal = text[position : match.start()]
        if "{" in literal or "}" in literal:
            raise TemplateError(f"unbalanced braces in {text!r}")
        if literal:
            parts.append((False, literal.replace("*", _STAR)))
        name = match.group(1)
        if name.startswith(LABEL_PREFIX):
            key = name[len(LABEL_PREFIX) :]
            if key not in trusted_label_keys:
                raise TemplateError(f"{{{name}}}: label key {key!r} is not in settings.trustedNamespaceLabelKeys")
        elif name not in VARIABLES:
            known = ", ".join("{" + v + "}" for v in sorted(VARIABLES))
            raise TemplateError(f"unknown variable {{{name}}} (known: {known}, {{nsLabel:<key>}})")
        parts.append((True, name))
        position = match.end()
    tail = text[position:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced braces in {text!r}")
    if tail:
        parts.append((False, tail.replace("*", _STAR)))
    return tuple(parts)


def _render(parts: tuple[tuple[bool, str], ...], lookup: Lookup, value_ok: ValueCheck) -> str | None:
    out: list[str] = []
    for is_variable, text in parts:
        if is_variable:
            value = lookup(text)
            if not value or not value_ok(text, value):
                return None
            out.append(value)
        else:
            out.append(text)
    return "".join(out)


def _segments(parts: tuple[tuple[bool, str], ...], separator: str = "/") -> tuple[tuple[tuple[bool, str], ...], ...]:
    """Parsed parts regrouped per segment: literal texts are cut at ``separator``, variables stay whole."""
    segments: list[list[tuple[bool, str]]] = [[]]
    for is_variable, text in parts:
        if is_variable:
            segments[-1].append((True, text))
            continue
        pieces = text.split(separator)
        for index, piece in enumerate(pieces):
            if index:
                segments.append([])
            if piece:
                segments[-1].append((False, piece))
    return tuple(tuple(segment) for segment in segments)


def _split(rendered: str, separator: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(segment.split(_STAR)) for segment in rendered.split(separator))


def _cached_render(
    cache: dict[tuple[str | None, ...], Shaped | None],
    names: tuple[str, ...],
    parts: tuple[tuple[bool, str], ...],
    lookup: Lookup,
    value_ok: ValueCheck,
    shape: Callable[[str], Shaped],
) -> Shaped | None:
    """Render and ``shape`` the text, remembering the result per tuple of variable values: callers repeat
    (renewals)."""
    key = tuple(map(lookup, names))
    try:
        return cache[key]  # None is a cached answer too ("renders no valid name"), hence no .get()
    except KeyError:
        pass
    rendered = _render(parts, lookup, value_ok)
    cached = None if rendered is None else shape(rendered)
    if len(cache) >= _RENDER_CACHE_LIMIT:
        cache.clear()
    cache[key] = cached
    return cached


def _identity_shape(rendered: str) -> RenderedIdentity:
    """A rendered identity path as glob pieces, and as plain segments when no star is left."""
    pattern = _split(rendered, "/")
    literal = tuple(pieces[0] for pieces in pattern) if all(len(p) == 1 for p in pattern) else None
    return pattern, literal


def _dns_shape(rendered: str) -> Rendered:
    return _split(rendered, ".")


def _pins_namespace(segments: tuple[tuple[tuple[bool, str], ...], ...]) -> bool:
    return len(segments) >= 2 and segments[0] == ((False, "ns"),) and segments[1] == ((True, "namespace"),)


def _globbed_variables(segments: tuple[tuple[tuple[bool, str], ...], ...]) -> tuple[str, ...]:
    found: list[str] = []
    for segment in segments:
        if any(not is_variable and _STAR in text for is_variable, text in segment):
            found.extend(text for is_variable, text in segment if is_variable)
    return tuple(dict.fromkeys(found))


def _path_value_ok(name: str, value: str) -> bool:
    return "/" not in value and _STAR not in value and "*" not in value


def _dns_value_ok(name: str, value: str) -> bool:
    if name in _MULTI_LABEL_DNS_VARIABLES:
        return _DNS_VALUE.fullmatch(value) is not None
    return _DNS_LABEL.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class IdentityTemplate:
    text: str
    trust_domain: str | None  # a literal trust domain, or None for {trustDomain}
    parts: tuple[tuple[bool, str], ...]  # the path after the trust domain, without a final /**
    globstar: bool
    variables: frozenset[str]
    static: tuple[tuple[str, ...], ...] | None  # the path pre-split when it has no variables
    _names: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _cache: dict[tuple[str | None, ...], RenderedIdentity | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    # The load-time checks' answers (``pins_namespace``, ``globbed_variables``): worked out when the template is
    # made, and handed over by ``copy`` (a load copies each distinct template into every rule that uses it).
    _pins: bool | None = field(default=None, compare=False, repr=False)
    _globbed: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self._pins is None or self._globbed is None:
            segments = self.segments
            object.__setattr__(self, "_pins", _pins_namespace(segments))
            object.__setattr__(self, "_globbed", _globbed_variables(segments))

    @classmethod
    def compile(cls, text: str, primary_trust_domain: str, trusted_label_keys: frozenset[str]) -> IdentityTemplate:
        """Raises TemplateError unless ``text`` can render a syntactically valid SPIFFE ID."""
        if not text.startswith(_SPIFFE_PREFIX):
            raise TemplateError(f'{text!r} must start with "spiffe://"')
        trust_domain_text, slash, path = text[len(_SPIFFE_PREFIX) :].partition("/")
        if trust_domain_text == "{trustDomain}":
            trust_domain = None
        elif "{" in trust_domain_text or "*" in trust_domain_text:
            raise TemplateError(f"the trust domain of {text!r} must be {{trustDomain}} or a literal name")
        else:
            trust_domain = trust_domain_text
        globstar = path == GLOBSTAR or path.endswith("/" + GLOBSTAR)
        if globstar:
            path = path[: -len(GLOBSTAR) - 1] if path != GLOBSTAR else ""
        if GLOBSTAR in path:
            raise TemplateError(f'"**" may only be the whole last path segment of {text!r}')
        parts = _parse(path, trusted_label_keys) if path else ()
        sample = _render(parts, lambda _: "x", lambda _name, _value: True) or ""
        sample_text = f"{_SPIFFE_PREFIX}{trust_domain or primary_trust_domain}{slash}{sample.replace(_STAR, 'x')}"
        if globstar:
            sample_text += "/x" if path else "x"
        try:
            parse_spiffe_id(sample_text)
        except InvalidSpiffeID as exc:
            raise TemplateError(f"{text!r} can never render a valid SPIFFE ID: {exc}") from None
        names = tuple(dict.fromkeys(name for is_variable, name in parts if is_variable))
        static = _split(sample, "/") if not names and path else (() if not path else None)
        return cls(text, trust_domain, parts, globstar, frozenset(names), static, names)

    def copy(self) -> IdentityTemplate:
        """The same template with a render cache of its own."""
        return IdentityTemplate(
            self.text, self.trust_domain, self.parts, self.globstar, self.variables, self.static, self._names,
            _pins=self._pins, _globbed=self._globbed,
        )  # fmt: skip

    @property
    def segments(self) -> tuple[tuple[tuple[bool, str], ...], ...]:
        """The path (without a final ``/**``) split at ``/`` into segments of (is_variable, text) parts."""
        return _segments(self.parts)

    @property
    def pins_namespace(self) -> bool:
        """Whether every rendered ID lies in the caller's own namespace: the path starts with ``ns/{namespace}``,
        a literal ``ns`` segment followed by a segment that is exactly ``{namespace}``.

        ``{namespace}`` anywhere else does not pin it: ``/{namespace}/**`` renders ``/ns/**`` for a namespace
        called ``ns``, ``/ns/{namespace}*/...`` covers every namespace sharing the prefix, and
        ``/ns/x/sa/ns/{namespace}`` sits inside namespace x's identities.
        """
        return bool(self._pins)  # set by __post_init__

    @property
    def globbed_variables(self) -> tuple[str, ...]:
        """Variables that share a path segment with a ``*``: the star also matches other values of the variable
        (``sa/{serviceAccount}*`` lets ``web`` claim ``webhook``)."""
        return self._globbed or ()  # set by __post_init__

    def render(self, lookup: Lookup) -> tuple[tuple[str, ...], ...] | None:
        """The path segments as glob pieces for this caller, or None when a value is missing or unusable."""
        if self.static is not None:
            return self.static
        rendered = self._rendered(lookup)
        return None if rendered is None else rendered[0]

    def _rendered(self, lookup: Lookup) -> RenderedIdentity | None:
        """``render`` and its plain-text form, remembered per tuple of variable values (callers repeat)."""
        return _cached_render(self._cache, self._names, self.parts, lookup, _path_value_ok, _identity_shape)

    def matches(
        self, spiffe_id: SpiffeID, primary_trust_domain: str, lookup: Lookup, *, for_deny: bool = False
    ) -> bool:
        """Whether ``spiffe_id`` matches the template rendered for this caller.

        When a value is missing or unusable (no ``{podName}``, an absent ``{nsLabel:…}``, a value with a ``/``)
        the template cannot say what it covers: an Allow rule then does not match, a Deny rule does (deny when
        unsure).
        """
        if spiffe_id.trust_domain != (self.trust_domain or primary_trust_domain):
            return False
        segments = spiffe_id.segments
        if self.static is not None:
            pattern = self.static
        else:
            rendered = self._rendered(lookup)
            if rendered is None:
                return for_deny
            pattern, literal = rendered
            if literal is not None:  # no star: the segments must equal it (all of them, or a prefix before **)
                if self.globstar:
                    return len(segments) > len(literal) and segments[: len(literal)] == literal
                return segments == literal
        if self.globstar:
            if len(segments) <= len(pattern):
                return False
        elif len(segments) != len(pattern):
            return False
        # map stops at the shorter: the pattern's segments, when a final ** covers the rest
        return all(map(match_pieces, pattern, segments))

    def describe(self, lookup: Lookup, primary_trust_domain: str) -> str:
        """The template as rendered for this caller, for messages: spiffe://cluster.local/ns/orders/sa/web."""
        rendered = _render(self.parts, lookup, _path_value_ok)
        if rendered is None:
            return self.text
        path = rendered.replace(_STAR, "*")
        suffix = ("/" if path else "") + GLOBSTAR if self.globstar else ""
        slash = "/" if path else ""
        return f"{_SPIFFE_PREFIX}{self.trust_domain or primary_trust_domain}{slash}{path}{suffix}"


def valid_dns_name(name: str, *, wildcard_ok: bool = True) -> bool:
    """Lowercase hostname syntax; a leftmost ``*`` label is accepted when ``wildcard_ok``."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if wildcard_ok and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_DNS_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True, slots=True)
class DnsTemplate:
    text: str
    parts: tuple[tuple[bool, str], ...]
    variables: frozenset[str]
    static: tuple[tuple[str, ...], ...] | None
    _names: tuple[str, ...] = field(default=(), compare=False, repr=False)
    _cache: dict[tuple[str | None, ...], Rendered | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def compile(cls, text: str, trusted_label_keys: frozenset[str]) -> DnsTemplate:
        """Raises TemplateError unless ``text`` can render a valid DNS name."""
        parts = _parse(text, trusted_label_keys)
        sample = _render(parts, lambda _: "x", lambda _name, _value: True) or ""
        if not valid_dns_name(sample.replace(_STAR, "x"), wildcard_ok=False):
            raise TemplateError(f"{text!r} can never render a valid lowercase DNS name")
        names = tuple(dict.fromkeys(name for is_variable, name in parts if is_variable))
        return cls(text, parts, frozenset(names), None if names else _split(sample, "."), names)

    def copy(self) -> DnsTemplate:
        """The same template with a render cache of its own."""
        return DnsTemplate(self.text, self.parts, self.variables, self.static, self._names)

    def render(self, lookup: Lookup) -> tuple[tuple[str, ...], ...] | None:
        if self.static is not None:
            return self.static
        return _cached_render(self._cache, self._names, self.parts, lookup, _dns_value_ok, _dns_shape)

    def matches(self, labels: tuple[str, ...], lookup: Lookup, *, allow_wildcard: bool, for_deny: bool = False) -> bool:
        """Whether the requested name (split in ``labels``) matches.

        A requested wildcard label (``*``) matches only a pattern label that is literally ``*`` and only when the
        rule allows wildcard names. Deny rules match broadly instead: a requested ``*`` label stands for every
        label, so it matches any pattern label (a certificate for ``*.payments.svc`` is valid for
        ``admin.payments.svc``, which a Deny rule on that name must therefore catch). A template that cannot
        render for this caller matches no name for an Allow rule and every name for a Deny rule.
        """
        pattern = self.render(lookup)
        if pattern is None:
            return for_deny
        if len(pattern) != len(labels):
            return False
        for pieces, label in zip(pattern, labels, strict=True):
            if "*" in label:
                if for_deny:
                    continue
                if not allow_wildcard or "*".join(pieces) != label:
                    return False
            elif not match_pieces(pieces, label):
                return False
        return True

    def describe(self, lookup: Lookup) -> str:
        rendered = _render(self.parts, lookup, _dns_value_ok)
        return self.text if rendered is None else rendered.replace(_STAR, "*")


class TemplateCompiler:
    """Compiles templates once per distinct text within a load (large sets repeat the same few templates in every
    policy). Each call returns a template of its own, so every rule keeps its own render cache."""

    def __init__(self, primary_trust_domain: str, trusted_label_keys: frozenset[str]) -> None:
        self._identities = CompileOnce(
            lambda text: IdentityTemplate.compile(text, primary_trust_domain, trusted_label_keys), TemplateError
        )
        self._dns = CompileOnce(lambda text: DnsTemplate.compile(text, trusted_label_keys), TemplateError)

    def identity(self, text: str) -> IdentityTemplate:
        """``IdentityTemplate.compile`` with this load's trust domain and label keys; raises TemplateError too."""
        return self._identities(text).copy()

    def dns(self, text: str) -> DnsTemplate:
        return self._dns(text).copy()
