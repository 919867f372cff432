"""Finds the policies (or rules) whose subjects could match a caller without testing each one.

Every entry is filed under the namespaces its subjects can reach, read from whichever field pins them:
``namespaces``, ``serviceAccounts`` written as ``namespace/name``, or the ``ns`` segment of ``principals``. An entry
no field pins to namespaces is filed under its service accounts instead, and only an entry pinned by neither is
looked at for every caller. A lookup returns a superset of the matching entries in their original order; the
caller still runs the full ``static_matches`` on each, so the index changes what is tested, never the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from policies.globs import NameGlob, PathGlob
from policies.subjects import SubjectPattern, Subjects

_PRINCIPAL_NAMESPACE, _PRINCIPAL_ACCOUNT = 2, 4  # <trustDomain>/ns/<namespace>/sa/<serviceAccount>


class GlobIndex:
    """Positions filed under one-segment glob patterns; ``lookup`` finds those whose pattern could match a name.

    Literal patterns are a dict lookup, ``prefix*`` and ``*suffix`` one dict lookup per prefix or suffix length in
    use; only other shapes are scanned (and returned unfiltered: the caller's full check decides).
    """

    def __init__(self, entries: Iterable[tuple[str, int]]) -> None:
        """``entries``: (pattern, position) pairs."""
        self._literals: dict[str, list[int]] = {}
        self._prefixes: dict[str, list[int]] = {}
        self._suffixes: dict[str, list[int]] = {}
        self._other: list[int] = []
        for pattern, position in entries:
            pieces = pattern.split("*")
            if len(pieces) == 1:
                self._literals.setdefault(pattern, []).append(position)
            elif len(pieces) == 2 and not pieces[1] and pieces[0]:
                self._prefixes.setdefault(pieces[0], []).append(position)
            elif len(pieces) == 2 and not pieces[0] and pieces[1]:
                self._suffixes.setdefault(pieces[1], []).append(position)
            else:
                self._other.append(position)
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})
        self._suffix_lengths = sorted({len(s) for s in self._suffixes})

    def lookup(self, name: str, into: set[int]) -> None:
        into.update(self._literals.get(name, ()))
        size = len(name)
        for length in self._prefix_lengths:
            if length > size:
                break
            into.update(self._prefixes.get(name[:length], ()))
        for length in self._suffix_lengths:
            if length > size:
                break
            into.update(self._suffixes.get(name[size - length :], ()))
        into.update(self._other)


def _segment(glob: PathGlob, index: int) -> str | None:
    """Segment ``index`` of a path glob as a one-segment pattern; None when a final ``**`` covers it."""
    if index < len(glob.segments):
        return "*".join(glob.segments[index])
    return None


def _namespace_patterns(subjects: Subjects) -> list[str] | None:
    """One-segment patterns covering every namespace ``subjects`` can match, or None when nothing pins them."""
    choices: list[list[str]] = []
    if subjects.namespaces:
        choices.append([p.pattern for p in subjects.namespaces])
    if subjects.service_accounts and all(isinstance(p.glob, PathGlob) for p in subjects.service_accounts):
        choices.append([_segment_of(p, 0) for p in subjects.service_accounts])
    if subjects.principals:
        namespaces = [_segment_of(p, _PRINCIPAL_NAMESPACE) for p in subjects.principals]
        choices.append(namespaces)
    return _best(choices)


def _account_patterns(subjects: Subjects) -> list[str] | None:
    choices: list[list[str]] = []
    if subjects.service_accounts:
        choices.append(
            [_segment_of(p, 1) if isinstance(p.glob, PathGlob) else p.pattern for p in subjects.service_accounts]
        )
    if subjects.principals:
        choices.append([_segment_of(p, _PRINCIPAL_ACCOUNT) for p in subjects.principals])
    return _best(choices)


def _segment_of(pattern: SubjectPattern, index: int) -> str:
    glob = pattern.glob
    if isinstance(glob, NameGlob):
        return "*"
    return _segment(glob, index) or "*"


def _best(choices: list[list[str]]) -> list[str] | None:
    """The most selective usable list: no bare ``*`` (it matches everything), fewest non-literal patterns."""
    usable = [patterns for patterns in choices if "*" not in patterns]
    if not usable:
        return None
    return min(usable, key=lambda patterns: (sum("*" in p for p in patterns), len(patterns)))


class SubjectIndex:
    """Entries with optional subjects (a policy's, or a rule's where None means "everyone"), by position."""

    def __init__(self, subjects: Sequence[Subjects | None]) -> None:
        by_namespace: list[tuple[str, int]] = []
        by_account: list[tuple[str, int]] = []
        self._everyone: list[int] = []
        self._size = len(subjects)
        for position, entry in enumerate(subjects):
            namespaces = _namespace_patterns(entry) if entry is not None else None
            accounts = _account_patterns(entry) if entry is not None and namespaces is None else None
            if namespaces is not None:
                by_namespace += ((pattern, position) for pattern in namespaces)
            elif accounts is not None:
                by_account += ((pattern, position) for pattern in accounts)
            else:
                self._everyone.append(position)
        self._by_namespace = GlobIndex(by_namespace)
        self._by_account = GlobIndex(by_account)

    def candidates(self, namespace: str, service_account: str) -> list[int]:
        """Positions, ascending, of every entry whose subjects could match the caller (a superset)."""
        if "/" in namespace or "/" in service_account:
            # Such names shift the segments of "namespace/name" and principals: no index assumption holds.
            return list(range(self._size))
        found: set[int] = set(self._everyone)
        self._by_namespace.lookup(namespace, found)
        self._by_account.lookup(service_account, found)
        return sorted(found)
