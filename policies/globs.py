"""Segment-aware globs (policy-format.md §2.2).

``*`` matches zero or more characters inside one segment and never crosses a separator (``/`` in SPIFFE IDs and
principals, ``.`` in DNS names). ``**`` may only be a whole final segment and then matches one or more whole
segments. Matching splits a segment pattern at its stars and finds the literal pieces left to right with
``str.find``: greedy leftmost placement is always correct for star-only patterns, so there is no backtracking
and the cost stays linear in practice (O(pattern * text) in the worst case, for texts capped at 2 KiB).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GLOBSTAR = "**"


def match_pieces(pieces: tuple[str, ...], text: str) -> bool:
    """Whether ``text`` matches the segment pattern whose literal pieces between stars are ``pieces``."""
    if len(pieces) == 1:
        return text == pieces[0]
    first, last = pieces[0], pieces[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


@dataclass(frozen=True, slots=True)
class NameGlob:
    """A glob over one segment, such as a namespace (``payments-*``) or a service account (``worker-*``)."""

    pattern: str
    pieces: tuple[str, ...]

    @classmethod
    def compile(cls, pattern: str) -> NameGlob:
        return cls(pattern, tuple(pattern.split("*")))

    @property
    def literal(self) -> bool:
        return len(self.pieces) == 1

    def matches(self, text: str) -> bool:
        return match_pieces(self.pieces, text)


@dataclass(frozen=True, slots=True)
class PathGlob:
    """A glob over separator-delimited segments, optionally ending in ``**``."""

    pattern: str
    separator: str
    segments: tuple[tuple[str, ...], ...]
    globstar: bool

    @classmethod
    def compile(cls, pattern: str, separator: str = "/") -> PathGlob:
        """Raises ValueError when ``**`` is not a whole final segment."""
        parts = pattern.split(separator)
        globstar = parts[-1] == GLOBSTAR
        if globstar:
            parts = parts[:-1]
        for part in parts:
            if GLOBSTAR in part:
                raise ValueError(f'"**" may only be the whole last segment of {pattern!r}')
        return cls(pattern, separator, tuple(tuple(p.split("*")) for p in parts), globstar)

    def could_match_length(self, count: int) -> bool:
        return count > len(self.segments) if self.globstar else count == len(self.segments)

    def matches(self, text: str) -> bool:
        return self.matches_segments(text.split(self.separator))

    def matches_segments(self, segments: list[str] | tuple[str, ...]) -> bool:
        if not self.could_match_length(len(segments)):
            return False
        return all(match_pieces(pieces, segment) for pieces, segment in zip(self.segments, segments, strict=False))

    def segment_could_be(self, index: int, text: str) -> bool:
        """Whether segment ``index`` of a match could equal ``text`` (used to lint principals)."""
        if index < len(self.segments):
            return match_pieces(self.segments[index], text)
        return self.globstar


@dataclass(frozen=True, slots=True)
class NameSet:
    """ "Any of these one-segment globs", compiled by shape so the common cases cost one C-level call.

    Literal names become a set lookup, ``prefix*`` and ``*suffix`` a single ``startswith``/``endswith`` over a
    tuple, ``*`` matches everything, and only the remaining shapes use ``match_pieces``.
    """

    everything: bool
    literals: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    general: tuple[tuple[str, ...], ...]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> NameSet:
        everything, literals, prefixes, suffixes, general = False, set(), [], [], []
        for pattern in patterns:
            pieces = tuple(pattern.split("*"))
            if len(pieces) == 1:
                literals.add(pattern)
            elif pattern == "*":
                everything = True
            elif len(pieces) == 2 and not pieces[1]:
                prefixes.append(pieces[0])
            elif len(pieces) == 2 and not pieces[0]:
                suffixes.append(pieces[1])
            else:
                general.append(pieces)
        return cls(everything, frozenset(literals), tuple(prefixes), tuple(suffixes), tuple(general))

    def matches(self, text: str) -> bool:
        if self.everything or text in self.literals:
            return True
        if self.prefixes and text.startswith(self.prefixes):
            return True
        if self.suffixes and text.endswith(self.suffixes):
            return True
        return any(match_pieces(pieces, text) for pieces in self.general)
