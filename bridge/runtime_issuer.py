"""Which issuer signs: the static one from the flags, or the one named in the runtime ConfigMap.

istio-csr's runtime configuration: a ConfigMap (``--runtime-issuance-config-map-name/-namespace``) with the keys
``issuer-name``, ``issuer-kind`` and ``issuer-group``. While it exists with all three keys non-empty it wins; a
change takes effect for the next request. Missing or empty keys are logged and the previous issuer kept. Deleting
the ConfigMap falls back to the static issuer, or to none (not ready) when ``--issuer-enabled=false``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from bridge.kube import CONFIG_MAPS, ListWatch, Obj, WatchSource

KEYS = ("issuer-name", "issuer-kind", "issuer-group")


@dataclass(frozen=True, slots=True)
class IssuerRef:
    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "group": self.group}

    def __str__(self) -> str:
        return f"{self.kind}.{self.group}/{self.name}"


def issuer_from_config_map(data: dict[str, str] | None) -> IssuerRef | None:
    """The issuer a runtime ConfigMap names; None (with the reason logged by the caller) when incomplete."""
    data = data or {}
    values = [str(data.get(key) or "").strip() for key in KEYS]
    if not all(values):
        return None
    return IssuerRef(*values)


class IssuerSelector:
    """Holds the active issuerRef; watches the runtime ConfigMap when configured. Listeners hear every change."""

    def __init__(
        self,
        static: IssuerRef | None,
        *,
        kube: WatchSource | None = None,
        config_map_namespace: str = "",
        config_map_name: str = "",
    ) -> None:
        self._static = static
        self._runtime: IssuerRef | None = None
        self._listeners: list[Callable[[IssuerRef | None], None]] = []
        self._watch: ListWatch | None = None
        self._config_map_name = config_map_name
        if kube is not None and config_map_name and config_map_namespace:
            self._watch = ListWatch(
                kube,
                CONFIG_MAPS,
                config_map_namespace,
                self,
                field_selector=f"metadata.name={config_map_name}",
                name=f"configmap {config_map_namespace}/{config_map_name}",
            )

    @property
    def current(self) -> IssuerRef | None:
        return self._runtime or self._static

    @property
    def ready(self) -> bool:
        """An issuer is configured (and, with a runtime ConfigMap, its watch has listed once)."""
        return self.current is not None and (self._watch is None or self._watch.synced)

    @property
    def watching(self) -> bool:
        """Whether a runtime ConfigMap is configured (and :meth:`run` watches it; otherwise it returns at once)."""
        return self._watch is not None

    def subscribe(self, listener: Callable[[IssuerRef | None], None]) -> None:
        self._listeners.append(listener)

    def _set_runtime(self, ref: IssuerRef | None) -> None:
        before = self.current
        self._runtime = ref
        after = self.current
        if after != before:
            logger.bind(event="issuer_changed", issuer=str(after) if after else None).info(
                "active issuer: {}", after or "none (every request answers UNAVAILABLE)"
            )
            for listener in self._listeners:
                listener(after)

    # WatchHandler
    def on_relist(self, objects: list[Obj]) -> None:
        mine = [o for o in objects if (o.get("metadata") or {}).get("name") == self._config_map_name]
        if not mine:
            self._set_runtime(None)
        else:
            self.on_event("ADDED", mine[0])

    def on_event(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            self._set_runtime(None)
            return
        ref = issuer_from_config_map(obj.get("data"))
        if ref is None:
            logger.bind(event="runtime_issuer_incomplete").error(
                "runtime issuer ConfigMap needs non-empty {}; keeping {}", ", ".join(KEYS), self.current
            )
            return
        self._set_runtime(ref)

    async def run(self, stop: asyncio.Event) -> None:
        if self._watch is not None:
            await self._watch.run(stop)
