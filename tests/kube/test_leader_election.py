"""Leader election on the real plane: of two candidates exactly one leads; a released Lease is taken at the next
retry; a leader that dies (no release) is replaced once its Lease expired; two ``meshsigner serve`` processes elect
one leader and a SIGKILLed leader hands the controllers over within the lease duration (plus one retry)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.controllers import ControllerMetrics
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.leader_election import LeaderElector, LeaseTimings
from clocks import SystemClock
from tests.support.kube_edits import edit
from tests.support.processes import ServerProcess, local_signer_flags, start_server
from tests.support.tokens import TokenIssuer
from tests.support.waiting import wait_for

FAST = LeaseTimings(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)


@pytest.fixture
def seams(kube_plane) -> Iterator[list[KubeClient]]:
    made: list[KubeClient] = []
    yield made
    for seam in made:
        seam.close()


class Candidate:
    """One elector with its own API client; records when its 'controllers' ran."""

    def __init__(self, kubeconfig: str, namespace: str, lease: str, seams: list[KubeClient], name: str) -> None:
        seam = KubeClient(KubeOptions(kubeconfig=kubeconfig), KubeMetrics(CollectorRegistry()))
        seams.append(seam)
        self.intervals: list[list[float]] = []  # [started, ended] per leadership
        self.stop = asyncio.Event()
        self.elector = LeaderElector(
            seam,
            namespace=namespace,
            name=lease,
            lead=self._lead,
            metrics=ControllerMetrics(CollectorRegistry()),
            clock=SystemClock(),
            timings=FAST,
            identity=name,
        )
        self.task = asyncio.create_task(self.elector.run(self.stop))

    async def _lead(self, stop: asyncio.Event) -> None:
        interval = [time.monotonic(), float("inf")]
        self.intervals.append(interval)
        try:
            await stop.wait()
        finally:
            interval[1] = time.monotonic()

    async def crash(self) -> None:
        """End without releasing, as a killed process would."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _until(condition, what: str, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _overlap(a: list[list[float]], b: list[list[float]]) -> bool:
    return any(x[0] < y[1] and y[0] < x[1] for x in a for y in b)


async def test_one_of_two_leads_and_a_released_lease_passes_at_the_next_retry(
    kube_plane, kube_api, make_namespace, seams
):
    namespace = make_namespace("lease")
    first = Candidate(kube_plane.kubeconfig, namespace, "meshsigner", seams, "first")
    await _until(lambda: first.elector.leading, "first candidate leads", 10)
    second = Candidate(kube_plane.kubeconfig, namespace, "meshsigner", seams, "second")
    # several renewals and retries of both: the second never leads while the first renews
    renewals = 0
    while renewals < 8:
        await asyncio.sleep(FAST.retry_period)
        renewals += 1
        assert first.elector.leading and not second.elector.leading
    first.stop.set()
    await first.task  # released on stop
    handover = await _until(lambda: second.elector.leading, "second candidate leads", 10)
    assert handover < FAST.retry_period * 1.2 + 1.0  # its next retry, not the lease duration
    assert first.intervals[0][1] <= second.intervals[0][0]  # the first's controllers had stopped already
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("meshsigner", namespace)
    assert lease.spec.holder_identity == "second" and lease.spec.lease_transitions >= 1
    second.stop.set()
    await second.task


async def test_a_crashed_leader_is_replaced_after_its_lease_expires(kube_plane, make_namespace, seams):
    namespace = make_namespace("lease")
    first = Candidate(kube_plane.kubeconfig, namespace, "meshsigner", seams, "first")
    await _until(lambda: first.elector.leading, "first candidate leads", 10)
    second = Candidate(kube_plane.kubeconfig, namespace, "meshsigner", seams, "second")
    await asyncio.sleep(FAST.retry_period * 2)  # the second has observed the first's renewals
    crashed_at = time.monotonic()
    await first.crash()
    await _until(lambda: second.elector.leading, "second candidate leads", 15)
    handover = time.monotonic() - crashed_at
    # not before the lease could have expired (last renewal was at most one retry before the crash) ...
    assert handover >= FAST.lease_duration - FAST.retry_period
    # ... and within the lease duration plus one jittered retry
    assert handover <= FAST.lease_duration + FAST.retry_period * 1.2 + 1.0
    assert not _overlap(first.intervals, second.intervals)
    second.stop.set()
    await second.task


async def test_a_leader_that_cannot_renew_stops_its_controllers(kube_plane, kube_api, make_namespace, seams):
    namespace = make_namespace("lease")
    first = Candidate(kube_plane.kubeconfig, namespace, "meshsigner", seams, "first")
    await _until(lambda: first.elector.leading, "first candidate leads", 10)
    # another writer takes the Lease away (as a candidate that saw it expire would)
    coordination = client.CoordinationV1Api(kube_api)

    def take(lease) -> None:
        lease.spec.holder_identity = "someone-else"
        lease.spec.lease_duration_seconds = 60

    edit(
        lambda: coordination.read_namespaced_lease("meshsigner", namespace),
        take,
        lambda lease: coordination.replace_namespaced_lease("meshsigner", namespace, lease),
    )  # the leader renews meanwhile
    took = await _until(lambda: not first.elector.leading, "first stops leading", 10)
    assert took < FAST.retry_period * 2 + 1.0
    assert first.intervals[0][1] != float("inf")  # its controllers were stopped
    first.stop.set()
    await first.task


# --- two serve processes ---------------------------------------------------------------------------------------
def _serve(tmp_path: Path, name: str, kubeconfig: str, lease_namespace: str, selector: str) -> ServerProcess:
    base = tmp_path / name
    base.mkdir()
    issuer = TokenIssuer()
    # one CA for both (the second reuses the folder the first created): the same roots, as replicas share them
    ca_dir = tmp_path / "ca"
    flags = [
        *[f for f in local_signer_flags(base, issuer) if not f.startswith("--local-ca-dir")],
        f"--local-ca-dir={ca_dir}",
        f"--kubeconfig={kubeconfig}",
        f"--leader-election-namespace={lease_namespace}",
        "--leader-election-name=meshsigner-e2e",
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=1s",
        f"--configmap-namespace-selector={selector}",
    ]
    return start_server(flags, tmp_path / f"{name}.log")


def _root_config_map(core: client.CoreV1Api, namespace: str) -> str | None:
    try:
        return (core.read_namespaced_config_map("istio-ca-root-cert", namespace).data or {}).get("root-cert.pem")
    except client.ApiException:
        return None


def test_two_serve_processes_elect_one_leader_and_a_killed_leader_hands_over(
    kube_plane, kube_api, make_namespace, tmp_path: Path
):
    lease_namespace = make_namespace("lease")
    label = f"meshsigner-e2e-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube_api)
    servers = [
        _serve(tmp_path, "a", kube_plane.kubeconfig, lease_namespace, f"{label}=yes"),
        _serve(tmp_path, "b", kube_plane.kubeconfig, lease_namespace, f"{label}=yes"),
    ]
    try:
        wait_for(lambda: sum(s.metric("meshsigner_leader") for s in servers) == 1, "one leader", 20)
        leader = next(s for s in servers if s.metric("meshsigner_leader") == 1)
        standby = next(s for s in servers if s is not leader)
        before = make_namespace("dist", labels={label: "yes"})
        wait_for(lambda: _root_config_map(core, before) is not None, "root ConfigMap written by the leader", 20)
        for _ in range(3):  # the standby stays a standby across its retries
            time.sleep(1)
            assert standby.metric("meshsigner_leader") == 0 and leader.metric("meshsigner_leader") == 1
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        killed_at = time.monotonic()
        wait_for(lambda: standby.metric("meshsigner_leader") == 1, "the standby leads", 15)
        handover = time.monotonic() - killed_at
        assert handover <= 4 + 1.2 + 1.5, f"handover took {handover:.1f}s"
        after = make_namespace("dist", labels={label: "yes"})
        wait_for(lambda: _root_config_map(core, after) is not None, "root ConfigMap written by the new leader", 20)
        assert _root_config_map(core, after) == _root_config_map(core, before)
        print(f"handover after SIGKILL: {handover:.2f}s")
    finally:
        for server in servers:
            server.stop()


def test_sigterm_releases_the_lease_so_the_standby_leads_at_once(kube_plane, make_namespace, tmp_path: Path):
    lease_namespace = make_namespace("lease")
    label = f"meshsigner-e2e-{secrets.token_hex(3)}"
    servers = [
        _serve(tmp_path, "a", kube_plane.kubeconfig, lease_namespace, f"{label}=yes"),
        _serve(tmp_path, "b", kube_plane.kubeconfig, lease_namespace, f"{label}=yes"),
    ]
    try:
        wait_for(lambda: sum(s.metric("meshsigner_leader") for s in servers) == 1, "one leader", 20)
        leader = next(s for s in servers if s.metric("meshsigner_leader") == 1)
        standby = next(s for s in servers if s is not leader)
        stopped_at = time.monotonic()
        assert leader.stop() == 0
        wait_for(lambda: standby.metric("meshsigner_leader") == 1, "the standby leads", 15)
        handover = time.monotonic() - stopped_at
        assert "released Lease" in leader.log()
        assert handover < 4, f"handover after SIGTERM took {handover:.1f}s (the lease duration is 4s)"
        print(f"handover after SIGTERM: {handover:.2f}s")
    finally:
        for server in servers:
            server.stop()
