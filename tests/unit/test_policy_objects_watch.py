"""The policy objects' watch hands every object to the store only once both kinds are listed (never a set built
before the settings arrive), and a burst of changes once it has settled."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.kube import KubeMetrics, Resource
from bridge.policy_objects import PolicyObjectWatch
from tests.support.clock import ManualClock

SELECTOR = "meshsigner.io/set=blue"
Objects = list[dict[str, Any]]


class FakeStream:
    """A watch response: the lines the test puts, until the watch shuts it down."""

    def __init__(self) -> None:
        self.lines: queue.Queue[bytes | None] = queue.Queue()

    def stream(self, amt: int, decode_content: bool = False) -> Iterator[bytes]:
        while (line := self.lines.get()) is not None:
            yield line + b"\n"

    def shutdown(self) -> None:
        self.lines.put(None)

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Lists answered when the test says so (one future per plural); one watch stream per plural."""

    def __init__(self, clock: ManualClock) -> None:
        self.metrics = KubeMetrics(CollectorRegistry())
        self.clock = clock
        self.lists: dict[str, asyncio.Future[Objects]] = {}
        self.streams: dict[str, FakeStream] = {}
        self.selectors: set[str] = set()
        self.opened = threading.Event()

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[Objects, str]:
        self.selectors.add(label_selector)
        future = self.lists.setdefault(resource.plural, asyncio.get_running_loop().create_future())
        return await future, "1"

    def open_watch(self, resource: Resource, namespace: str | None, resource_version: str, **_: str) -> FakeStream:
        stream = self.streams.setdefault(resource.plural, FakeStream())
        self.opened.set()
        return stream

    def answer(self, plural: str, objects: Objects) -> None:
        self.lists.setdefault(plural, asyncio.get_running_loop().create_future()).set_result(objects)


def policy(name: str, generation: int = 1) -> dict[str, Any]:
    return {"kind": "IdentityPolicy", "metadata": {"namespace": "istio-system", "name": name, "generation": generation}}


SETTINGS = {"kind": "PolicySettings", "metadata": {"name": "settings", "generation": 1}}


async def settle_until(clock: ManualClock, condition: Callable[[], bool], what: str) -> None:
    """Let pending changes settle (a change during the settling time restarts it) until ``condition`` holds."""
    for _ in range(20):
        await until(lambda: clock.sleeper_count == 1 or condition(), f"{what}: settling")
        if condition():
            return
        await clock.advance(0.3)
    raise AssertionError(f"never happened: {what}")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds (the watch threads hand their lines over the loop)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def test_nothing_is_delivered_before_both_kinds_are_listed_and_bursts_are_delivered_once() -> None:
    clock = ManualClock()
    api = FakeApi(clock)
    delivered: list[list[dict[str, Any]]] = []

    async def deliver(objects: list[dict[str, Any]]) -> None:
        delivered.append(objects)

    watch = PolicyObjectWatch(api, deliver, settle=0.3, longest_settle=3.0, label_selector=SELECTOR)  # type: ignore[arg-type]  # a fake API
    stop = asyncio.Event()
    tasks = [asyncio.create_task(factory()) for factory in watch.tasks(stop).values()]
    try:
        await until(lambda: set(api.lists) == {"identitypolicies", "policysettings"}, "both lists asked")
        assert api.selectors == {SELECTOR}
        api.answer("identitypolicies", [policy("baseline")])
        await until(lambda: clock.sleeper_count == 1, "the change settling")
        await clock.advance(0.3)
        await until(lambda: clock.sleeper_count == 0, "the settled change looked at")
        assert not watch.synced and delivered == []  # the settings are not listed yet: no set without them

        api.answer("policysettings", [SETTINGS])
        await until(lambda: clock.sleeper_count == 1, "the settings settling")
        await clock.advance(0.3)
        await until(lambda: len(delivered) == 1, "the first delivery")
        assert delivered == [[SETTINGS, policy("baseline")]]

        # two changes within the settling time: one delivery with both
        await until(lambda: "identitypolicies" in api.streams, "the policy watch open")
        stream = api.streams["identitypolicies"]
        stream.lines.put(json.dumps({"type": "MODIFIED", "object": policy("baseline", 2)}).encode())
        stream.lines.put(json.dumps({"type": "ADDED", "object": policy("extra")}).encode())
        await until(lambda: watch.objects()[1:] == [policy("baseline", 2), policy("extra")], "both events seen")
        await settle_until(clock, lambda: len(delivered) == 2, "the burst delivered")
        assert delivered[1] == [SETTINGS, policy("baseline", 2), policy("extra")]

        stream.lines.put(json.dumps({"type": "DELETED", "object": policy("extra")}).encode())
        await settle_until(clock, lambda: len(delivered) == 3, "the deletion delivered")
        assert delivered[2] == [SETTINGS, policy("baseline", 2)]
        assert len(delivered) == 3  # the burst was one delivery
    finally:
        stop.set()
        for task in tasks:  # a list the test never answered does not end with stop
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_identity_policies_are_listed_in_every_namespace_at_once() -> None:
    from bridge.kube.resources import collection_path
    from bridge.policy_objects import IDENTITY_POLICIES, POLICY_SETTINGS

    assert collection_path(IDENTITY_POLICIES, None) == "/apis/meshsigner.io/v1alpha1/identitypolicies"
    assert collection_path(POLICY_SETTINGS, None) == "/apis/meshsigner.io/v1alpha1/policysettings"
