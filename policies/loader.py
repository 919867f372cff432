"""Loads a policy set from files, all or nothing (policy-format.md §3, "Loading").

Every document of every file is checked; if any has an error the whole set is rejected (skipping one document
could silently drop a Deny rule and fail open) and the caller gets every located problem at once. The revision is
the SHA-256 of a canonical form of the set (documents sorted by kind and name, comments, file names and key order
ignored), so two directories that mean the same thing have the same revision.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from policies.compiled import RESERVED_POLICY_NAMES, ObjectRef, Policy, PolicySettings
from policies.compiler import KnownRules, compile_policy, compile_settings
from policies.conditions import ConditionCompiler
from policies.document_schemas import read_document
from policies.policy_set import SETTINGS_KEY, PolicySet
from policies.problems import PolicySetInvalid, Problem, Severity
from policies.schema_readers import Reporter
from policies.templates import TemplateCompiler
from policies.yaml_source import ScalarTags, SourceDocument, parse_documents

POLICY_FILE_SUFFIXES = (".yaml", ".yml")


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.yaml``/``*.yml`` files directly in each directory (sorted), and any file named explicitly.

    Hidden entries are skipped, which also skips the ``..data`` folders of a mounted ConfigMap while still
    following its top-level symlinks.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # scandir's entries know their type without a stat per file (is_file still follows symlinks).
            with os.scandir(path) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if entry.name.endswith(POLICY_FILE_SUFFIXES) and not entry.name.startswith(".") and entry.is_file()
                )
            files.extend(path / name for name in names)
        else:
            files.append(path)
    return files


def read_sources(files: Sequence[Path]) -> tuple[list[tuple[str, str]], list[Problem]]:
    sources, problems = [], []
    for file in files:
        try:
            sources.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(file), 1, 1, "", f"cannot read: {exc}"))
    return sources, problems


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a set is built: a large set allocates millions of objects that all
    stay alive, and each automatic collection walks the ones before it (half the CPU time of a 10,000-policy load).
    Nothing built here forms cycles that must be freed early; the previous state is restored even on error."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_policy_set(
    paths: Iterable[str | Path], *, trust_domain: str | None = None, root_namespace: str | None = None
) -> PolicySet:
    """Load directories and/or files as one set. Raises PolicySetInvalid with every problem when invalid.
    ``root_namespace``: see ``build_policy_set``."""
    paths = list(paths)
    files = policy_files(paths)
    sources, problems = read_sources(files)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        problems.append(Problem(shown, 1, 1, "", "no *.yaml or *.yml policy files found"))
    return build_policy_set(sources, trust_domain=trust_domain, problems=problems, root_namespace=root_namespace)


def build_policy_set(
    sources: Sequence[tuple[str, str]],
    *,
    trust_domain: str | None = None,
    problems: list[Problem] | None = None,
    root_namespace: str | None = None,
) -> PolicySet:
    """Build a set from (file name, YAML text) pairs. Raises PolicySetInvalid with every problem when invalid.

    With ``root_namespace`` (the Kubernetes source), an IdentityPolicy whose ``metadata.namespace`` is another
    namespace is confined to that namespace (``compile_policy``); without it (the directory source)
    ``metadata.namespace`` means nothing, as before.
    """
    problems = list(problems or ())
    documents: list[SourceDocument] = []
    scalar_tags: ScalarTags = {}
    # one pause over parse and build (build_from_documents's own pause nests inside it): a collection between
    # the two would walk every parsed node (measured: a 10,000-policy load 6.3 s -> 8.2 s)
    with collection_paused():
        for file, text in sources:
            parsed, syntax_problems = parse_documents(text, file, scalar_tags)
            problems.extend(syntax_problems)
            documents.extend(parsed)
        return build_from_documents(
            documents,
            trust_domain=trust_domain,
            problems=problems,
            root_namespace=root_namespace,
            origin=(sources[0][0], 1) if sources else None,
            files=[file for file, _ in sources],
        )


def build_from_documents(
    documents: Sequence[SourceDocument],
    *,
    trust_domain: str | None = None,
    problems: list[Problem] | None = None,
    root_namespace: str | None = None,
    origin: tuple[str, int] | None = None,
    files: Sequence[str] = (),
    revision: str | None = None,
) -> PolicySet:
    """Build a set from parsed documents (YAML files, or Kubernetes objects: ``object_documents.py``).

    ``origin`` is where set-wide problems are reported (a name and a line: 1 for a file, 0 for objects), None when
    nothing was read at all; ``revision`` replaces the content digest (the Kubernetes source derives it from the
    objects' resourceVersions). Raises PolicySetInvalid with every problem when invalid.
    """
    with collection_paused():
        return _build(documents, trust_domain, problems, root_namespace, origin, files, revision)


def _build(
    documents: Sequence[SourceDocument],
    trust_domain: str | None,
    problems: list[Problem] | None,
    root_namespace: str | None,
    origin: tuple[str, int] | None,
    files: Sequence[str],
    revision: str | None,
) -> PolicySet:
    problems = list(problems or ())
    read: list[tuple[str, dict[str, Any], Reporter, SourceDocument]] = []
    for document in documents:
        report = Reporter(document.file)
        result = read_document(document.node, report)
        problems.extend(report.problems)
        if result is not None and result[0] != "PolicyTest":
            read.append((result[0], result[1], report, document))

    settings_docs = [entry for entry in read if entry[0] == "PolicySettings"]
    for _, _, report, _ in settings_docs[1:]:
        report.error("kind", f"a set takes one PolicySettings document; the first is in {settings_docs[0][3].where}")
        problems.extend(report.problems[-1:])
    objects: dict[str, ObjectRef] = {}
    if settings_docs:
        _, fields, report, document = settings_docs[0]
        before = len(report.problems)
        settings = compile_settings(fields, report, expected_trust_domain=trust_domain, source=document.where)
        problems.extend(report.problems[before:])
        if document.ref is not None:
            objects[SETTINGS_KEY] = document.ref
    else:
        settings = PolicySettings(trust_domain=trust_domain or PolicySettings().trust_domain)
        if origin is not None and any(kind == "IdentityPolicy" for kind, _, _, _ in read):
            problems.append(
                Problem(
                    origin[0],
                    origin[1],
                    origin[1],
                    "",
                    "the set has no PolicySettings document: the built-in defaults apply (max 7d, no trust-domain "
                    "aliases, no node accounts, default key algorithms); add one to make them explicit",
                    Severity.WARNING,
                )
            )

    policies: list[Policy] = []
    first_seen: dict[str, str] = {}
    conditions = ConditionCompiler()
    templates = TemplateCompiler(settings.trust_domain, settings.trusted_namespace_label_keys)
    known_rules: KnownRules = {}
    for kind, fields, report, document in read:
        if kind != "IdentityPolicy":
            continue
        before = len(report.problems)
        name = fields["metadata"]["name"]
        namespace = fields["metadata"].get("namespace")
        confined = namespace if root_namespace is not None and namespace not in (None, root_namespace) else None
        if confined is not None:
            name = f"{confined}:{name}"
        if name in RESERVED_POLICY_NAMES:
            report.error(
                "metadata.name",
                f"{name!r} is reserved: reports use it for the built-in own-identity rule (builtin/own-identity) "
                "and the settings ceiling (settings); choose another name",
            )
        if name in first_seen:
            report.error("metadata.name", f"duplicate policy name {name!r} (first in {first_seen[name]})")
        first_seen.setdefault(name, document.where)
        policies.append(
            compile_policy(
                fields,
                report,
                settings,
                source=document.where,
                conditions=conditions,
                templates=templates,
                confined_to=confined,
                known_rules=known_rules,
            )
        )
        if document.ref is not None:
            objects.setdefault(name, document.ref)
        problems.extend(report.problems[before:])

    if origin is not None and not read and not any(p.severity is Severity.ERROR for p in problems):
        nothing = "no PolicySettings or IdentityPolicy documents found"
        problems.append(Problem(origin[0], origin[1], origin[1], "", nothing))
    if any(p.severity is Severity.ERROR for p in problems):
        raise PolicySetInvalid(problems)
    return PolicySet(
        settings,
        policies,
        revision=revision or revision_of([(kind, fields) for kind, fields, _, _ in read]),
        warnings=problems,
        files=files,
        objects=objects,
    )


def revision_of(documents: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """``sha256:<hex>`` over the canonical JSON of the documents, sorted by (kind, name)."""
    canonical = sorted(
        ({"kind": kind, "metadata": fields["metadata"], "spec": fields["spec"]} for kind, fields in documents),
        key=lambda d: (d["kind"], d["metadata"]["name"]),
    )
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=_canonical_scalar)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_scalar(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot canonicalise {type(value).__name__}")
