"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's LeaseLock does it.

Every replica serves gRPC; only the holder of the Lease runs the cluster-wide writers (root ConfigMaps,
ClusterTrustBundle, istiod's certificate), so two replicas never fight over the same object.

- A candidate reads the Lease every ``retry_period``. It takes the Lease when it does not exist (create), has no
  holder (released), or has not changed for ``leaseDurationSeconds`` of *this process's* monotonic clock since it
  was last seen to change. Remote timestamps are never compared with the local clock, so clock skew between nodes
  cannot hand the Lease over early.
- Every write carries the ``resourceVersion`` read: two candidates writing at once get one success and one 409.
- The leader renews every ``retry_period``. When it holds no successful renewal for ``renew_deadline`` (shorter than
  the lease duration, so it stops before anyone may take over), or sees another holder, it stops leading at once:
  the controllers' tasks are cancelled.
- :meth:`LeaderElector.release` (shutdown) stops the controllers, then clears the holder so a standby takes over
  at its next retry instead of after the lease duration.

API errors are logged (once per distinct error) and retried; they never end the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loguru import logger

from bridge.controllers import ControllerMetrics
from bridge.kube import LEASES, KubeConflict, KubeError, KubeNotFound, Obj, Resource
from clocks import Clock, sleep_unless_stopped

Lead = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
ACQUIRE_JITTER = 0.2  # candidates spread their retries a little, as client-go's JitterFactor does


class LeaseApi(Protocol):
    """What the elector needs of the API (KubeClient is one)."""

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj: ...

    async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj: ...

    async def replace(self, resource: Resource, namespace: str | None, name: str, body: Obj) -> Obj: ...


@dataclass(frozen=True)
class LeaseTimings:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError("leader election needs lease duration > renew deadline > retry period > 0")


class Attempt(enum.Enum):
    HELD = "held"  # this process holds the Lease now
    OTHER = "other"  # another live holder
    FAILED = "failed"  # the API did not answer usefully (error or conflict): unknown


def micro_time(moment: datetime) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """client-go's choice: the host (a pod's name) and a random suffix, unique per process."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


class LeaderElector:
    def __init__(
        self,
        api: LeaseApi,
        *,
        namespace: str,
        name: str,
        lead: Lead,
        metrics: ControllerMetrics,
        clock: Clock,
        timings: LeaseTimings | None = None,
        identity: str | None = None,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self._lead = lead
        self._metrics = metrics
        self._clock = clock
        self.timings = timings or LeaseTimings()
        self.identity = identity or default_identity()
        self.leading = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last read
        self._observed_at = 0.0  # monotonic time the record last changed
        self._last_error = ""
        self._leading_stop: asyncio.Event | None = None
        self._lead_task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._released = False
        self._metrics.leader.set(0)

    # --- the loop ----------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead, and campaign again after losing, until ``stop`` (then release) or :meth:`release`."""
        ended = asyncio.Event()
        relay = asyncio.ensure_future(self._relay(stop, ended))
        try:
            while not ended.is_set():
                if await self._attempt() is Attempt.HELD:
                    await self._lead_until_lost(ended)
                    continue
                wait = self.timings.retry_period * (1 + random.random() * ACQUIRE_JITTER)  # timing jitter, not crypto
                await sleep_unless_stopped(self._clock, ended, wait)
        finally:
            relay.cancel()
            if stop.is_set() or self._closing.is_set():
                await self.release()

    async def _relay(self, stop: asyncio.Event, ended: asyncio.Event) -> None:
        """``ended`` is set by shutdown (``stop``) or by :meth:`release`, whichever comes first."""
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._closing.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        ended.set()

    async def _lead_until_lost(self, ended: asyncio.Event) -> None:
        self._start_leading()
        last_renewed = self._clock.monotonic()
        try:
            while not await sleep_unless_stopped(self._clock, ended, self.timings.retry_period):
                attempt = await self._attempt()
                now = self._clock.monotonic()
                if attempt is Attempt.HELD:
                    last_renewed = now
                elif attempt is Attempt.OTHER:
                    logger.bind(event="leader_lost", lease=self.name).warning(
                        "another holder took Lease {}/{}: stopping the cluster controllers", self.namespace, self.name
                    )
                    return
                elif now - last_renewed >= self.timings.renew_deadline:
                    logger.bind(event="leader_lost", lease=self.name).warning(
                        "Lease {}/{} not renewed for {:.0f}s: stopping the cluster controllers",
                        self.namespace,
                        self.name,
                        now - last_renewed,
                    )
                    return
        finally:
            await self._stop_leading()

    def _start_leading(self) -> None:
        self.leading = True
        self._metrics.leader.set(1)
        logger.bind(event="leader_acquired", lease=self.name, identity=self.identity).info(
            "leading: Lease {}/{} held by {}; starting the cluster controllers",
            self.namespace,
            self.name,
            self.identity,
        )
        self._leading_stop = asyncio.Event()
        self._lead_task = asyncio.create_task(self._lead(self._leading_stop), name="leader-controllers")

    async def _stop_leading(self) -> None:
        """Stop the controllers now: set their stop event and cancel their tasks (no write after this returns)."""
        task, stop = self._lead_task, self._leading_stop
        self._lead_task, self._leading_stop = None, None
        if stop is not None:
            stop.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # the controllers log their own failures
                await task
        if self.leading:
            self.leading = False
            self._metrics.leader.set(0)

    # --- one read and maybe one write --------------------------------------------------------------------------
    async def _attempt(self) -> Attempt:
        try:
            attempt = await self._try_acquire_or_renew()
        except KubeConflict:
            return Attempt.FAILED  # someone wrote between our read and our write: read again next time
        except KubeError as exc:
            self._log_error(exc)
            return Attempt.FAILED
        self._last_error = ""
        return attempt

    def _log_error(self, exc: KubeError) -> None:
        text = str(exc)
        if text != self._last_error:
            self._last_error = text
            logger.bind(event="leader_election_error", lease=self.name).warning(
                "Lease {}/{}: {} (retrying every {:.0f}s)", self.namespace, self.name, exc, self.timings.retry_period
            )

    def _spec(self, previous: Obj) -> Obj:
        now = micro_time(self._clock.now())
        mine = previous.get("holderIdentity") == self.identity
        transitions = int(previous.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timings.lease_duration),
            "acquireTime": previous.get("acquireTime") if mine else now,
            "renewTime": now,
            "leaseTransitions": transitions if mine or not previous else transitions + 1,
        }

    async def _try_acquire_or_renew(self) -> Attempt:
        try:
            lease = await self._api.get(LEASES, self.namespace, self.name)
        except KubeNotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}),
            }
            self._observe(await self._api.create(LEASES, self.namespace, body))
            return Attempt.HELD
        spec = self._observe(lease)
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_duration)
        expired = self._clock.monotonic() >= self._observed_at + duration
        if holder and holder != self.identity and not expired:
            return Attempt.OTHER
        if self._released:
            return Attempt.OTHER  # released on shutdown: never take it again
        body = {**lease, "spec": {**spec, **self._spec(spec)}}  # metadata.resourceVersion makes the write conditional
        self._observe(await self._api.replace(LEASES, self.namespace, self.name, body))
        return Attempt.HELD

    def _observe(self, lease: Obj) -> Obj:
        spec = lease.get("spec")
        spec = spec if isinstance(spec, dict) else {}
        record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock.monotonic()
        return spec

    # --- shutdown ----------------------------------------------------------------------------------------------
    async def release(self) -> None:
        """Stop the controllers and give the Lease up (holder cleared) so a standby leads at its next retry.
        Idempotent; after it, this process never campaigns again. Called on shutdown (SIGTERM)."""
        self._closing.set()
        if self._released:
            return
        self._released = True
        await self._stop_leading()
        if self._observed is None or self._observed[0] != self.identity:
            return  # never held it (as far as the last read showed)
        for _ in range(3):  # a renewal in flight may have moved the resourceVersion: read again
            try:
                await self._clear_holder()
            except KubeConflict:
                continue
            except KubeError as exc:  # the Lease then expires after its duration, as if this process had died
                logger.bind(event="leader_release_failed", lease=self.name).warning(
                    "could not release Lease {}/{}: {}", self.namespace, self.name, exc
                )
            return

    async def _clear_holder(self) -> None:
        lease = await self._api.get(LEASES, self.namespace, self.name)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        now = micro_time(self._clock.now())
        released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now}
        await self._api.replace(LEASES, self.namespace, self.name, {**lease, "spec": released})
        logger.bind(event="leader_released", lease=self.name).info("released Lease {}/{}", self.namespace, self.name)
