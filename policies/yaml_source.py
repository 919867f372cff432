"""Reads YAML documents as position-carrying node trees, so every later error can name ``file:line:col``.

PyYAML's composer keeps a mark on every node; the strict schema (``schema_readers.py``) walks those nodes instead of
the plain Python values, which also lets it reject duplicate keys that ``yaml.safe_load`` would silently merge.
"""

from __future__ import annotations

import functools
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
        # PyYAML's reader already refuses unprintable characters when the loader is made
        if scalar_tags is not None and not YAML_LOADER.yaml_path_resolvers:
            loader = _tag_caching(YAML_LOADER)(text)  # type: ignore[arg-type]  # classes hash; the stubs disagree
            loader.scalar_tags = scalar_tags  # type: ignore[attr-defined]  # _ScalarTagCache's field
        else:
            loader = YAML_LOADER(text)
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
    documents = [SourceDocument(file, index, node) for index, node in enumerate(nodes) if node is not None]
    return documents, []


class _ScalarTagCache:
    """Mixed into a loader class by ``_tag_caching``: a scalar's tag is looked up in ``scalar_tags``, filled by the
    loader's own resolver. Only for loaders without path resolvers (as SafeLoader ships): a scalar's tag is then a
    function of its text and implicit flags alone, and the per-node path bookkeeping does nothing, so it is
    skipped too."""

    scalar_tags: ScalarTags

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)  # type: ignore[misc,no-any-return]
        key = (value, implicit)
        tag = self.scalar_tags.get(key)
        if tag is None:
            tag = self.scalar_tags[key] = super().resolve(kind, value, implicit)  # type: ignore[misc]
        return tag

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None


@functools.cache  # one class per loader class (libyaml's or PyYAML's), not one per file
def _tag_caching(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    return type(f"TagCaching{base.__name__}", (_ScalarTagCache, base), {})


def position(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts; (0, 0) for a node built from an API object (no text)."""
    return node.start_mark.line + 1, node.start_mark.column + 1
