"""Reads YAML documents as position-carrying node trees, so every later error can name ``file:line:col``.

PyYAML's composer keeps a mark on every node; the strict schema (``schema_readers.py``) walks those nodes instead of
the plain Python values, which also lets it reject duplicate keys that ``yaml.safe_load`` would silently merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


ScalarTags = dict[tuple[str, Any], str]


def parse_documents(
    text: str, file: str, scalar_tags: ScalarTags | None = None
) -> tuple[list[SourceDocument], list[Problem]]:
    """Split ``text`` into YAML documents. Empty documents are skipped; a syntax error is one located problem.

    ``scalar_tags`` remembers each plain scalar's resolved tag; share one dict across the files of a load (a large
    set repeats the same keys and values in every file, and the resolver's regular expressions cost more than
    libyaml's parsing).
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = YAML_LOADER(text)  # PyYAML's reader already refuses unprintable characters here
        if scalar_tags is not None and not loader.yaml_path_resolvers:
            _resolve_once(loader, scalar_tags)
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        return [], [Problem(file, line, column, "", f"invalid YAML: {reason}")]
    except yaml.YAMLError as exc:
        return [], [Problem(file, 1, 1, "", f"invalid YAML: {exc}")]
    finally:
        if loader is not None:
            loader.dispose()
            loader.__dict__.clear()  # the replaced methods refer back to the loader: free it without a collection
    documents = [SourceDocument(file, index, node) for index, node in enumerate(nodes) if node is not None]
    return documents, []


def _resolve_once(loader: yaml.SafeLoader, scalar_tags: ScalarTags) -> None:
    """Replace ``loader``'s tag resolution for scalars by a lookup in ``scalar_tags``, filled by the resolver itself.

    Only for a loader without path resolvers (as SafeLoader ships): a scalar's tag is then a function of its text
    and its implicit flags alone, and the per-node path bookkeeping does nothing, so it is skipped too.
    """
    resolve: Callable[[type[yaml.Node], Any, Any], str] = loader.resolve

    def resolve_scalar(kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is not yaml.ScalarNode:
            return resolve(kind, value, implicit)
        key = (value, implicit)
        tag = scalar_tags.get(key)
        if tag is None:
            tag = scalar_tags[key] = resolve(kind, value, implicit)
        return tag

    def no_descend(current_node: Any, current_index: Any) -> None:
        return None

    def no_ascend() -> None:
        return None

    # Instance attributes shadow the class's methods for libyaml's composer and PyYAML's alike.
    loader.resolve = resolve_scalar  # type: ignore[method-assign]
    loader.descend_resolver = no_descend  # type: ignore[method-assign]
    loader.ascend_resolver = no_ascend  # type: ignore[method-assign]


def position(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts; (0, 0) for a node built from an API object (no text)."""
    return node.start_mark.line + 1, node.start_mark.column + 1
