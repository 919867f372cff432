"""Namespace labels for policy selectors and ``{nsLabel:...}`` templates, from one namespace list+watch.

Until the first list has arrived the answer is None ("not synced"), which the policy engine turns into a
retryable UNAVAILABLE instead of guessing. A namespace the cache has not seen yet (created a moment ago) is
also None, for the same reason: an empty label set could deny, or allow, what the real labels would not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.kube import NAMESPACES, KubeClient, ListWatch


class NamespaceLabelCache:
    def __init__(self, kube: KubeClient) -> None:
        self._labels: dict[str, dict[str, str]] = {}
        self.watch = ListWatch(kube, NAMESPACES, None, self, name="namespaces")

    @property
    def ready(self) -> bool:
        return self.watch.synced

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        if not self.watch.synced:
            return None
        return self._labels.get(namespace)

    def on_relist(self, objects: list[dict[str, Any]]) -> None:
        self._labels = {name: labels for name, labels in map(_name_and_labels, objects) if name}

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name, labels = _name_and_labels(obj)
        if not name:
            return
        if kind == "DELETED":
            self._labels.pop(name, None)
        else:
            self._labels[name] = labels


def _name_and_labels(obj: dict[str, Any]) -> tuple[str, dict[str, str]]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("name") or ""), dict(metadata.get("labels") or {})
