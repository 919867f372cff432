"""What the leader-only controllers share: their metrics, and the runner that keeps them going while this
process leads.

A controller is a coroutine ``run(stop)`` that works until ``stop`` is set. :func:`run_controllers` restarts one that
fails (an API error: one warning line; anything else: a traceback) after a backoff, and cancels them all when
leadership ends. Each reconcile is counted in ``meshsigner_controller_reconciles_total{controller,result}``.
The controllers that publish the roots notice a new bundle through :func:`follow_roots`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.kube import KubeError
from clocks import Clock, sleep_unless_stopped

Controller = Callable[[asyncio.Event], Awaitable[None]]

BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
ROOTS_POLL_SECONDS = 1.0


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "meshsigner_leader",
            "1 while this process holds the leader Lease and runs the cluster controllers, else 0",
            registry=registry,
            multiprocess_mode="max",  # only the first of --workers processes takes part
        )
        self.reconciles = Counter(
            "meshsigner_controller_reconciles_total",
            "Reconciles of the leader-only controllers, by controller and result (unchanged, created, updated, "
            "skipped, error)",
            ["controller", "result"],
            registry=registry,
        )

    def count(self, controller: str, result: str) -> None:
        self.reconciles.labels(controller, result).inc()


async def _keep_running(name: str, controller: Controller, stop: asyncio.Event, clock: Clock) -> None:
    delay = BACKOFF_START
    while not stop.is_set():
        try:
            await controller(stop)
        except KubeError as exc:
            logger.bind(event="controller_failed", controller=name).warning(
                "{} stopped by an API error ({}); restarting in {:.0f}s", name, exc, delay
            )
        except Exception:  # a bug: the traceback says where; the controller still restarts
            logger.bind(event="controller_failed", controller=name).exception("{} failed; restarting", name)
        else:
            if stop.is_set():
                return
            await stop.wait()  # a controller with nothing to do (e.g. an API not served) stays ended
            return
        if await sleep_unless_stopped(clock, stop, delay):
            return
        delay = min(delay * 2, BACKOFF_MAX)


async def run_controllers(controllers: Mapping[str, Controller], stop: asyncio.Event, clock: Clock) -> None:
    """Run every controller until ``stop`` (then they end) or until cancelled (then they are cancelled)."""
    tasks = [
        asyncio.create_task(_keep_running(name, controller, stop, clock), name=f"controller-{name}")
        for name, controller in controllers.items()
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def follow_roots(
    roots: Callable[[], str], published: str, changed: Callable[[str], None], stop: asyncio.Event, clock: Clock
) -> None:
    """Until ``stop``: read ``roots()`` each second (a string comparison) and call ``changed`` with a bundle that is
    new and not empty (an empty one is never published over the last good one)."""
    while not await sleep_unless_stopped(clock, stop, ROOTS_POLL_SECONDS):
        latest = roots()
        if latest and latest != published:
            published = latest
            changed(latest)
