"""Keeps one named object in the state a controller wants: recreated when deleted, put back when edited.

The object is watched (list+watch narrowed to its name), so a delete or an edit wakes the keeper at once; a
``trigger()`` (new roots, a new issuer) or the resync period does too. Each pass reads the object fresh and asks
the controller's ``decide(current)`` what to write: a body to create (``current`` None) or to replace with (its
``metadata.resourceVersion`` makes the write conditional), or None when nothing needs writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from loguru import logger

from bridge.controllers import ControllerMetrics
from bridge.kube import KubeConflict, KubeError, KubeNotFound, ListWatch, Obj, Resource, WatchSource
from clocks import Clock, sleep_unless_stopped

Decide = Callable[[Obj | None], Awaitable[Obj | None]]
RESYNC_SECONDS = 300.0
RETRY_START, RETRY_MAX = 0.5, 30.0


class KeeperApi(WatchSource, Protocol):
    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...

    async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj: ...

    async def replace(self, resource: Resource, namespace: str | None, name: str, body: Obj) -> Obj: ...


async def write_decided(
    api: KeeperApi, resource: Resource, namespace: str | None, name: str, current: Obj | None, body: Obj | None
) -> tuple[str, Obj | None]:
    """Write what a controller decided for ``current``: nothing for no ``body``, a create when there is no object,
    else a replace (conditional on ``body``'s resourceVersion). The result label and the object as stored."""
    if body is None:
        return "unchanged", None
    if current is None:
        return "created", await api.create(resource, namespace, body)
    return "updated", await api.replace(resource, namespace, name, body)


class ObjectKeeper:
    def __init__(
        self,
        api: KeeperApi,
        resource: Resource,
        namespace: str | None,
        name: str,
        decide: Decide,
        *,
        controller: str,
        metrics: ControllerMetrics,
        clock: Clock,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self._api = api
        self._resource = resource
        self._namespace = namespace
        self.name = name
        self._decide = decide
        self._controller = controller
        self._metrics = metrics
        self._clock = clock
        self._resync = resync_seconds
        self._wake = asyncio.Event()
        self.next_pass: float | None = None  # seconds until a pass the controller asked for (renewal), if sooner
        self._watch = ListWatch(
            api, resource, namespace, self, field_selector=f"metadata.name={name}", name=f"{controller} {name}"
        )

    def trigger(self) -> None:
        self._wake.set()

    # WatchHandler: any change to the object (or a relist) means "look again"
    def on_relist(self, objects: list[Obj]) -> None:
        self._wake.set()

    def on_event(self, kind: str, obj: Obj) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        watch = asyncio.create_task(self._watch.run(stop), name=f"watch-{self._controller}")
        retry = RETRY_START
        try:
            self._wake.set()
            while not stop.is_set():
                if self._wake.is_set():
                    self._wake.clear()
                    if not await self._pass():
                        self._wake.set()
                        if await sleep_unless_stopped(self._clock, stop, retry):
                            return
                        retry = min(retry * 2, RETRY_MAX)
                        continue
                    retry = RETRY_START
                wait = min(self._resync, self.next_pass) if self.next_pass is not None else self._resync
                if await self._wait(stop, wait):
                    return
                if watch.done():
                    watch.result()  # a bug in the watch: raise it (the controller runner restarts us)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> bool:
        """Until woken, ``seconds`` passed (then a pass is due) or ``stop``; True when stopped."""
        woken = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({woken, stopper, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (woken, stopper, timer):
                waiter.cancel()
        self._wake.set()
        return stop.is_set()

    async def _pass(self) -> bool:
        """One read-decide-write; False when it should be retried."""
        where = f"{self._namespace}/{self.name}" if self._namespace else self.name
        try:
            try:
                current: Obj | None = await self._api.get(self._resource, self._namespace, self.name)
            except KubeNotFound:
                current = None
            body = await self._decide(current)
            result, _ = await write_decided(self._api, self._resource, self._namespace, self.name, current, body)
        except KubeConflict:
            self._metrics.count(self._controller, "conflict")
            return False
        except KubeError as exc:
            self._metrics.count(self._controller, "error")
            logger.bind(event="reconcile_failed", controller=self._controller).warning(
                "{} {}: {}", self._resource.plural, where, exc
            )
            return False
        self._metrics.count(self._controller, result)
        if result != "unchanged":
            logger.bind(event="reconciled", controller=self._controller, result=result).info(
                "{} {} {}", self._resource.plural, where, result
            )
        return True
