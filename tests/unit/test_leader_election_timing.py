"""The elector's timing on a ManualClock, against an in-memory Lease with the API's optimistic concurrency: a
standby waits the full lease duration after the last change it saw, a leader that cannot renew stops its
controllers at the renew deadline (before any standby may take over), and a released Lease is taken at once."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from bridge.controllers import ControllerMetrics
from bridge.leader_election import LeaderElector, LeaseTimings
from tests.support.clock import ManualClock
from tests.support.lease_store import LeaseStore
from tests.support.waiting import until_true

TIMINGS = LeaseTimings(lease_duration=15, renew_deadline=10, retry_period=2)


class Candidate:
    def __init__(self, store: LeaseStore, clock: ManualClock, name: str) -> None:
        self.controllers_running = False
        self.stop = asyncio.Event()
        self.elector = LeaderElector(
            store,
            namespace="istio-system",
            name="istio-csr",
            lead=self._lead,
            metrics=ControllerMetrics(CollectorRegistry()),
            clock=clock,
            timings=TIMINGS,
            identity=name,
        )
        self.task = asyncio.create_task(self.elector.run(self.stop))

    async def _lead(self, stop: asyncio.Event) -> None:
        self.controllers_running = True
        try:
            await stop.wait()
        finally:
            self.controllers_running = False


async def _advance(clock: ManualClock, seconds: float, step: float = 0.5) -> None:
    for _ in range(int(seconds / step)):
        await clock.advance(step)


async def test_a_standby_waits_the_lease_duration_after_the_last_renewal_it_saw() -> None:
    clock, store = ManualClock(), LeaseStore()
    first = Candidate(store, clock, "first")
    await until_true(lambda: first.controllers_running, "first leads")
    second = Candidate(store, clock, "second")
    await _advance(clock, 30)
    assert store.holder == "first" and not second.controllers_running
    first.task.cancel()  # dies without releasing
    await asyncio.gather(first.task, return_exceptions=True)
    await _advance(clock, 12)
    assert not second.controllers_running  # the lease may still be valid for the dead holder
    await _advance(clock, 6)  # 15 s after the last renewal it saw, plus a jittered retry
    await until_true(lambda: second.controllers_running, "second leads")
    assert store.holder == "second"
    second.stop.set()
    await second.task


async def test_a_leader_that_cannot_renew_stops_at_the_renew_deadline() -> None:
    clock, store = ManualClock(), LeaseStore()
    leader = Candidate(store, clock, "leader")
    await until_true(lambda: leader.controllers_running, "leads")
    store.down = True
    await _advance(clock, 8)
    assert leader.controllers_running  # within the renew deadline: keeps leading
    await _advance(clock, 4)
    await until_true(lambda: not leader.controllers_running, "controllers stopped")
    await until_true(lambda: not leader.elector.leading, "no longer leading")
    store.down = False  # the API is back: it campaigns again and, the Lease being its own, leads again
    await _advance(clock, 4)
    await until_true(lambda: leader.controllers_running, "leads again")
    leader.stop.set()
    await leader.task


async def test_release_hands_over_at_the_next_retry() -> None:
    clock, store = ManualClock(), LeaseStore()
    first = Candidate(store, clock, "first")
    await until_true(lambda: first.controllers_running, "first leads")
    second = Candidate(store, clock, "second")
    await _advance(clock, 4)
    await first.elector.release()
    assert not first.controllers_running and store.holder == ""
    await _advance(clock, 3)  # one jittered retry
    await until_true(lambda: second.controllers_running, "second leads")
    await _advance(clock, 10)
    assert store.holder == "second" and not first.elector.leading  # a released elector never campaigns again
    second.stop.set()
    await asyncio.gather(first.task, second.task)
