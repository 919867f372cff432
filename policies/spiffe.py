"""Strict SPIFFE ID parsing (docs/spiffe-ids.md): reject anything that is not already canonical, never normalise."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SPIFFE_ID_BYTES = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX = "spiffe://"
# The shape every canonical ID has, in one match (ASCII only, so its length in characters is its length in bytes);
# what it cannot see (dot-only segments, empty trust-domain labels) is checked after it. Anything it rejects goes
# through the step-by-step checks below, which say why.
_CANONICAL = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")


class InvalidSpiffeID(ValueError):
    """The string is not a canonical SPIFFE ID; the message says why."""


@dataclass(frozen=True, slots=True)
class SpiffeID:
    trust_domain: str
    segments: tuple[str, ...]

    @property
    def path(self) -> str:
        return "".join("/" + s for s in self.segments)

    def __str__(self) -> str:
        return f"{_PREFIX}{self.trust_domain}{self.path}"

    @property
    def workload(self) -> tuple[str, str] | None:
        """(namespace, service account) when the path is exactly Istio's ``/ns/<ns>/sa/<sa>``."""
        s = self.segments
        if len(s) == 4 and s[0] == "ns" and s[2] == "sa":
            return s[1], s[3]
        return None


def parse_spiffe_id(value: str) -> SpiffeID:
    canonical = _CANONICAL.fullmatch(value) if len(value) <= MAX_SPIFFE_ID_BYTES else None
    if canonical is not None:
        trust_domain, path = canonical.groups()
        segments = tuple(path[1:].split("/")) if path else ()
        if "" not in trust_domain.split(".") and "." not in segments and ".." not in segments:
            return SpiffeID(trust_domain, segments)
    return _parse_explaining(value)


def _parse_explaining(value: str) -> SpiffeID:
    """``parse_spiffe_id`` one check at a time, so a refusal names the rule broken."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SPIFFE_ID_BYTES:
        raise InvalidSpiffeID(f"longer than {MAX_SPIFFE_ID_BYTES} bytes")
    if not value.startswith(_PREFIX):
        raise InvalidSpiffeID('scheme must be exactly "spiffe://"')
    rest = value[len(_PREFIX) :]
    for bad, what in (("?", "query"), ("#", "fragment"), ("%", "percent-encoding")):
        if bad in rest:
            raise InvalidSpiffeID(f"{what} not allowed")
    trust_domain, sep, path = rest.partition("/")
    if not trust_domain:
        raise InvalidSpiffeID("empty trust domain")
    if "@" in trust_domain:
        raise InvalidSpiffeID("userinfo not allowed in trust domain")
    if ":" in trust_domain:
        raise InvalidSpiffeID("port not allowed in trust domain")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise InvalidSpiffeID(f"trust domain {trust_domain!r} must be lowercase [a-z0-9._-]")
    if "" in trust_domain.split("."):  # a leading/trailing dot or ".." is another spelling of a DNS name
        raise InvalidSpiffeID(f"trust domain {trust_domain!r} has an empty label (leading, trailing or double dot)")
    if not sep:
        return SpiffeID(trust_domain, ())
    if path == "":
        raise InvalidSpiffeID('trailing "/" not allowed')
    segments = tuple(path.split("/"))
    for segment in segments:
        if segment == "":
            raise InvalidSpiffeID('empty path segment or trailing "/" not allowed')
        if segment in (".", ".."):
            raise InvalidSpiffeID(f'path segment "{segment}" not allowed')
        if not _SEGMENT.fullmatch(segment):
            raise InvalidSpiffeID(f"path segment {segment!r} has characters outside [A-Za-z0-9._-]")
    return SpiffeID(trust_domain, segments)


def workload_spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"{_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"
