"""The bridge's periodic work runs on the injected clock: the leftover sweep and the pinned root bundle's watcher
act when clock time passes, not before, and stop promptly; the issuer check re-reads an unserved issuer type on
the clock, and ends (rather than going stale) when its watch ends by a bug."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bridge.certificates import certificates_pem
from bridge.cleanup import LeftoverSweeper
from bridge.issuer_check import UNKNOWN_RECHECK_SECONDS, IssuerCheck, IssuerState
from bridge.kube import KubeForbidden, Obj, Resource
from bridge.root_bundle import RootBundle
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from clocks import within
from tests.support.chain_builder import make_ca
from tests.support.clock import ManualClock
from tests.support.watch_source import NoApi


async def settle(done: asyncio.Event | None = None) -> None:
    """Let woken tasks run (no wall-clock wait): until ``done`` is set, or a bounded number of loop turns."""
    for _ in range(50):
        if done is not None and done.is_set():
            return
        await asyncio.sleep(0)


class Store:
    """CertificateRequests as the API would list them; records deletes."""

    def __init__(self, objects: list[Obj]) -> None:
        self.objects = objects
        self.deleted: list[str] = []
        self.changed = asyncio.Event()

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]:
        return list(self.objects), "1"

    async def delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None = None) -> None:
        self.deleted.append(name)
        self.objects = [o for o in self.objects if o["metadata"]["name"] != name]
        self.changed.set()


def _request(name: str, clock: ManualClock, seconds_ago: float) -> Obj:
    stamp = (clock.now() - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": stamp}}


async def test_the_sweep_runs_at_start_and_then_every_interval_of_clock_time() -> None:
    clock = ManualClock()
    # request timeout 10 s: anything older than 20 s belongs to no request in flight
    store = Store([_request("crashed", clock, 300), _request("in-flight", clock, 5)])
    sweeper = LeftoverSweeper(
        store, "istio-system", request_timeout_seconds=10, registry=CollectorRegistry(), interval_seconds=60,
        clock=clock,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    await asyncio.wait_for(store.changed.wait(), 5)
    assert store.deleted == ["crashed"]
    store.changed.clear()
    await clock.advance(59)
    await settle()
    assert store.deleted == ["crashed"]  # no sweep before the interval
    await clock.advance(1)
    await asyncio.wait_for(store.changed.wait(), 5)
    assert store.deleted == ["crashed", "in-flight"]  # 65 s old by now: left behind by a crash
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_the_pinned_bundle_is_reread_when_clock_time_passes(tmp_path: Path) -> None:
    first, second = make_ca("first root"), make_ca("second root")
    path = tmp_path / "roots.pem"
    path.write_text(certificates_pem([first.certificate]))
    clock = ManualClock()
    bundle = RootBundle(path, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(bundle.watch(stop, interval=1.0))
    await settle()
    path.write_text(certificates_pem([second.certificate]))
    await clock.advance(0.5)
    await settle()
    assert bundle.roots == (first.certificate,)  # not re-read before the interval
    await clock.advance(0.5)
    await settle()
    assert bundle.roots == (second.certificate,)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_within_answers_the_work_or_times_out_on_clock_time() -> None:
    """The CertificateRequest wait: bounded by clock time, and the abandoned wait is cancelled (not leaked)."""
    clock = ManualClock()
    issued: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def wait_for_issuance() -> str:
        return await issued

    waiting = asyncio.create_task(within(30, wait_for_issuance(), clock))
    await clock.advance(29)
    assert not waiting.done()
    issued.set_result("chain")
    assert await asyncio.wait_for(waiting, 5) == "chain"

    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def wait_forever() -> str:
        return await never

    timing_out = asyncio.create_task(within(30, wait_forever(), clock))
    await clock.advance(29.5)
    assert not timing_out.done()
    await clock.advance(0.5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(timing_out, 5)
    await settle()
    assert never.cancelled()


class IssuerApi(NoApi):
    """Serves one Ready issuer to the probe; the watch's list answers ``listed``."""

    def __init__(self, clock: ManualClock, listed: list[Obj]) -> None:
        async def lister() -> tuple[list[Obj], str]:
            return listed, "1"

        super().__init__(clock, lister)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        return {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}


async def test_a_bug_in_the_issuer_watch_ends_the_issuer_check() -> None:
    """Before, the check kept waiting for an issuer change while its watch lay dead, and the state went stale."""
    selector = IssuerSelector(IssuerRef("ca"))
    api = IssuerApi(ManualClock(), listed=["not an object"])  # type: ignore[list-item]  # the bug: judge_issuer on a str
    check = IssuerCheck(api, selector, "istio-system", CollectorRegistry())
    with pytest.raises(AttributeError):
        await asyncio.wait_for(check.run(asyncio.Event()), 5)


async def test_an_unserved_issuer_type_is_read_again_after_the_recheck_interval() -> None:
    clock = ManualClock()
    reads: list[float] = []
    read_again = asyncio.Event()

    class Unserved(IssuerApi):
        async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
            reads.append(clock.monotonic())
            if len(reads) > 1:
                read_again.set()
            raise KubeForbidden(403, "no RBAC for this issuer type")

    check = IssuerCheck(Unserved(clock, []), IssuerSelector(IssuerRef("vault", "VaultIssuer", "example.com")),
                        "istio-system", CollectorRegistry())  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(check.run(stop))
    await settle()
    assert reads == [0.0] and check.state is IssuerState.UNKNOWN
    await clock.advance(UNKNOWN_RECHECK_SECONDS - 1)
    await settle()
    assert reads == [0.0]
    await clock.advance(1)
    await asyncio.wait_for(read_again.wait(), 5)
    assert reads == [0.0, UNKNOWN_RECHECK_SECONDS]
    stop.set()
    await asyncio.wait_for(task, 5)
