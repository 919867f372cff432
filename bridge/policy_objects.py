"""The policy objects' list+watch (``--policy-source kubernetes``): IdentityPolicy objects of every namespace and
the PolicySettings singleton, handed as plain dicts to a callback after each change.

Nothing here reads a policy: ``serve`` passes the policy store's ``objects_changed`` as the callback, which builds
the whole set all-or-nothing and keeps the last good one. The callback gets every object only once both kinds have
been listed (a set built from the policies before the settings arrive would decide with the built-in defaults), and
a burst of changes (``kubectl apply -f`` of a folder) is delivered once, after ``settle`` seconds without another:
the set is never built from half of an apply. Every replica runs this watch and decides; none writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from loguru import logger

from bridge.kube import ListWatch, Obj, Resource, WatchSource
from clocks import sleep_unless_stopped

GROUP, VERSION = "meshsigner.io", "v1alpha1"
IDENTITY_POLICIES = Resource(GROUP, VERSION, "identitypolicies")  # namespace None: every namespace
POLICY_SETTINGS = Resource(GROUP, VERSION, "policysettings", namespaced=False)

PolicyObjectsCallback = Callable[[list[Obj]], Awaitable[object]]
TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class _KindCache:
    """The current objects of one kind, by (namespace, name); every change sets ``changed``."""

    def __init__(self, changed: asyncio.Event) -> None:
        self._changed = changed
        self.objects: dict[tuple[str, str], Obj] = {}

    def on_relist(self, objects: list[Obj]) -> None:
        self.objects = {key: obj for obj in objects if (key := _key(obj))[1]}
        self._changed.set()

    def on_event(self, kind: str, obj: Obj) -> None:
        key = _key(obj)
        if not key[1]:
            return
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._changed.set()


class PolicyObjectWatch:
    """Both kinds' ListWatches and the loop that hands their objects to ``deliver``.

    Args:
        kube: the API (a KubeClient); its clock times the settling.
        deliver: called with every policy object (both kinds) after a change; awaited before the next delivery.
        settle: seconds without another change before a change is delivered.
        longest_settle: a change is delivered after this long even while changes keep coming.
        label_selector: only the objects it selects (of both kinds); empty: all.
    """

    def __init__(
        self,
        kube: WatchSource,
        deliver: PolicyObjectsCallback,
        *,
        settle: float = 0.3,
        longest_settle: float = 3.0,
        label_selector: str = "",
    ) -> None:
        self._clock = kube.clock
        self._deliver = deliver
        self._settle = settle
        self._longest_settle = longest_settle
        self._changed = asyncio.Event()
        self._policies = _KindCache(self._changed)
        self._settings = _KindCache(self._changed)
        self.watches = (
            ListWatch(
                kube, IDENTITY_POLICIES, None, self._policies, label_selector=label_selector, name="identitypolicies"
            ),
            ListWatch(
                kube, POLICY_SETTINGS, None, self._settings, label_selector=label_selector, name="policysettings"
            ),
        )

    @property
    def synced(self) -> bool:
        """Both kinds listed at least once."""
        return all(watch.synced for watch in self.watches)

    def objects(self) -> list[Obj]:
        """Every policy object now: the settings first, then the policies by namespace and name."""
        settings = [self._settings.objects[key] for key in sorted(self._settings.objects)]
        return settings + [self._policies.objects[key] for key in sorted(self._policies.objects)]

    def tasks(self, stop: asyncio.Event) -> dict[str, TaskFactory]:
        """The two watches and the delivery loop, for the task supervisor."""
        policies, settings = self.watches
        return {
            "identitypolicy-watch": lambda: policies.run(stop),
            "policysettings-watch": lambda: settings.run(stop),
            "policy-objects-delivery": lambda: self.run_delivery(stop),
        }

    async def run_delivery(self, stop: asyncio.Event) -> None:
        """Deliver the objects after each settled change until ``stop`` is set."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait((changed, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not changed.done():
                    changed.cancel()
                    return
                if await self._settled(stop):
                    return
                if not self.synced:
                    continue  # the other kind's first list sets ``changed`` again
                objects = self.objects()
                logger.bind(event="policy_objects_changed", objects=len(objects)).debug(
                    "policy objects changed: {} objects", len(objects)
                )
                await self._deliver(objects)
        finally:
            stopped.cancel()

    async def _settled(self, stop: asyncio.Event) -> bool:
        """Wait until no change came for ``settle`` seconds (at most ``longest_settle``); True when stopped."""
        started = self._clock.monotonic()
        while True:
            self._changed.clear()
            if await sleep_unless_stopped(self._clock, stop, self._settle):
                return True
            if not self._changed.is_set() or self._clock.monotonic() - started >= self._longest_settle:
                self._changed.clear()
                return False


async def read_policy_objects(kube: WatchSource, *, label_selector: str = "") -> list[Obj]:
    """Every policy object now, one list per kind (the settings first): the live set that ``meshsigner policy
    lint|explain --kubeconfig`` checks."""
    settings, _ = await kube.list(POLICY_SETTINGS, None, label_selector=label_selector)
    policies, _ = await kube.list(IDENTITY_POLICIES, None, label_selector=label_selector)
    return sorted(settings, key=_key) + sorted(policies, key=_key)


def _key(obj: Obj) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
