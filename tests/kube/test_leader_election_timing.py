"""The elector's timing on a ManualClock, against the real plane's Lease API (its optimistic concurrency included):
a standby waits the full lease duration after the last change it saw, a leader that cannot reach the API stops its
controllers at the renew deadline (before any standby may take over), and a released Lease is taken at once.

The elector measures expiry on its own clock, so the ManualClock drives every timer while the reads and writes go to
kube-apiserver. Time moves only when every campaigning elector waits on the clock again (its API call answered),
so each step is as deterministic as the elector's jitter allows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.controllers import ControllerMetrics
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.leader_election import LeaderElector, LeaseTimings
from tests.kube.faults.cutting_proxy import CuttingProxy
from tests.support.clock import ManualClock

TIMINGS = LeaseTimings(lease_duration=15, renew_deadline=10, retry_period=2)
LEASE = "istio-csr"
REAL_SECONDS = 20.0  # bounds a failure only: a passing wait returns as soon as the API answered


class Candidate:
    def __init__(self, kubeconfig: str, namespace: str, clock: ManualClock, name: str) -> None:
        self.controllers_running = False
        self.stop = asyncio.Event()
        self.seam = KubeClient(KubeOptions(kubeconfig=kubeconfig), KubeMetrics(CollectorRegistry()))
        self.elector = LeaderElector(
            self.seam,
            namespace=namespace,
            name=LEASE,
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


class Election:
    """The candidates of one test on one clock and one Lease in a fresh namespace."""

    def __init__(self, kubeconfig: str, namespace: str, kube_api: client.ApiClient) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.clock = ManualClock()
        self.candidates: list[Candidate] = []
        self._leases = client.CoordinationV1Api(kube_api)

    def candidate(self, name: str, kubeconfig: str | None = None) -> Candidate:
        made = Candidate(kubeconfig or self.kubeconfig, self.namespace, self.clock, name)
        self.candidates.append(made)
        return made

    @property
    def holder(self) -> str:
        spec = self._leases.read_namespaced_lease(LEASE, self.namespace).spec
        return str(spec.holder_identity or "") if spec else ""

    async def settled(self) -> None:
        """Until every campaigning elector waits on the clock again (one clock sleeper each)."""
        await until(
            lambda: self.clock.sleeper_count == sum(not c.task.done() for c in self.candidates),
            "every elector waits on the clock",
        )

    async def advance(self, seconds: float, step: float = 0.5) -> None:
        for _ in range(int(seconds / step)):
            await self.settled()
            await self.clock.advance(step)
        await self.settled()

    def close(self) -> None:
        for candidate in self.candidates:
            candidate.task.cancel()
            candidate.seam.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + REAL_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {REAL_SECONDS:.0f}s: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def election(kube_plane, kube_api, make_namespace) -> Iterator[Election]:
    made = Election(kube_plane.kubeconfig, make_namespace("lease"), kube_api)
    yield made
    made.close()


@pytest.fixture
def proxy(kube_plane) -> Iterator[CuttingProxy]:
    if kube_plane.external:
        pytest.skip("external cluster: the proxy needs the local plane's API port")
    made = CuttingProxy(kube_plane.api_port)
    yield made
    made.close()


async def test_a_standby_waits_the_lease_duration_after_the_last_renewal_it_saw(election: Election) -> None:
    first = election.candidate("first")
    await until(lambda: first.controllers_running, "first leads")
    second = election.candidate("second")
    await election.advance(30)
    assert election.holder == "first" and not second.controllers_running
    first.task.cancel()  # dies without releasing
    await asyncio.gather(first.task, return_exceptions=True)
    await election.advance(12)
    assert not second.controllers_running  # the lease may still be valid for the dead holder
    await election.advance(6)  # 15 s after the last renewal it saw, plus a jittered retry
    await until(lambda: second.controllers_running, "second leads")
    assert election.holder == "second"
    second.stop.set()
    await second.task


async def test_a_leader_that_cannot_renew_stops_at_the_renew_deadline(
    election: Election, proxy: CuttingProxy, tmp_path: Path
) -> None:
    leader = election.candidate("leader", str(proxy.kubeconfig(election.kubeconfig, tmp_path / "proxy.kubeconfig")))
    await until(lambda: leader.controllers_running, "leads")
    proxy.set_down(True)
    await election.advance(8)
    assert leader.controllers_running  # within the renew deadline: keeps leading
    await election.advance(4)
    await until(lambda: not leader.controllers_running, "controllers stopped")
    await until(lambda: not leader.elector.leading, "no longer leading")
    proxy.set_down(False)  # the API is back: it campaigns again and, the Lease being its own, leads again
    await election.advance(4)
    await until(lambda: leader.controllers_running, "leads again")
    leader.stop.set()
    await leader.task


async def test_release_hands_over_at_the_next_retry(election: Election) -> None:
    first = election.candidate("first")
    await until(lambda: first.controllers_running, "first leads")
    second = election.candidate("second")
    await election.advance(4)
    await first.elector.release()
    assert not first.controllers_running and election.holder == ""
    await election.advance(3)  # one jittered retry
    await until(lambda: second.controllers_running, "second leads")
    await election.advance(10)
    assert election.holder == "second" and not first.elector.leading  # a released elector never campaigns again
    second.stop.set()
    await asyncio.gather(first.task, second.task)
