"""Reads YAML documents as position-carrying node trees, so every later error can name ``file:line:col``.

PyYAML's composer keeps a mark on every node; the strict schema (``schema_readers.py``) walks those nodes instead of
the plain Python values, which also lets it reject duplicate keys that ``yaml.safe_load`` would silently merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from policies.compiled import ObjectRef
from policies.problems import Problem

# libyaml's parser when PyYAML was built with it (about 5x faster on a large set); both keep a mark on every node.
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class SourceDocument:
    file: str  # the name used in messages (for a Kubernetes object: "IdentityPolicy <namespace>/<name>")
    index: int  # position of the document in its file, from 0
    node: yaml.Node
    ref: ObjectRef | None = None  # the Kubernetes object the document was read from (policies/object_documents.py)

    @property
    def where(self) -> str:
        """How reports name the document: ``file#index``, or the object."""
        return self.file if self.ref is not None else f"{self.file}#{self.index}"


def parse_documents(text: str, file: str) -> tuple[list[SourceDocument], list[Problem]]:
    """Split ``text`` into YAML documents. Empty documents are skipped; a syntax error is one located problem."""
    try:
        nodes = list(yaml.compose_all(text, Loader=YAML_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return [], [Problem(file, line, column, "", f"invalid YAML: {reason}")]
    except yaml.YAMLError as exc:
        return [], [Problem(file, 1, 1, "", f"invalid YAML: {exc}")]
    documents = [SourceDocument(file, index, node) for index, node in enumerate(nodes) if node is not None]
    return documents, []


def position(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts; (0, 0) for a node built from an API object (no text)."""
    return node.start_mark.line + 1, node.start_mark.column + 1
