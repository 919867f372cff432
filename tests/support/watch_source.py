"""Stand-ins for the API behind a ListWatch (bridge.kube.WatchSource), for tests of pure watch logic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.kube import KubeMetrics, KubeUnavailable, Obj, Resource
from clocks import Clock, SystemClock


class NoApi:
    """A source whose list answers with ``lister`` (default: the API is unreachable) and that never streams."""

    def __init__(
        self,
        clock: Clock | None = None,
        lister: Callable[[], Awaitable[tuple[list[Obj], str]]] | None = None,
    ) -> None:
        self.metrics = KubeMetrics(CollectorRegistry())
        self.clock: Clock = clock or SystemClock()
        self._lister = lister

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]:
        if self._lister is None:
            raise KubeUnavailable(0, "no API in this test")
        return await self._lister()

    def open_watch(self, resource: Resource, namespace: str | None, resource_version: str, **selectors: Any) -> Any:
        raise KubeUnavailable(0, "no watch stream in this test")
