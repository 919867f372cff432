"""Keeps the server's long-running tasks (watches, reload loops, renewal) running until shutdown.

A task that raises, or returns before shutdown, leaves the cache or file it keeps current going stale without a
word. The supervisor says so (a traceback for a programming error; one line for an API or backend outage, which is
expected to pass), counts it in ``meshsigner_task_restarts_total``, marks the server not ready while the task waits
to restart, and restarts it with exponential backoff. A task that stayed up long enough starts its backoff afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from clocks import Clock, sleep_unless_stopped

TaskFactory = Callable[[], Coroutine[Any, Any, None]]

BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 120.0  # a task that ran this long before failing restarts without accumulated backoff


class TaskSupervisor:
    """Starts named tasks, restarts them when they fail, and reports which are waiting to restart (readiness)."""

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        clock: Clock,
        registry: CollectorRegistry,
        outages: tuple[type[Exception], ...] = (),
        backoff_start: float = BACKOFF_START_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        healthy_after: float = HEALTHY_AFTER_SECONDS,
    ) -> None:
        self._stop = stop
        self._outages = outages  # errors that mean "the API or backend is down" (no traceback: nothing to fix here)
        self._clock = clock
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._healthy_after = healthy_after
        self._tasks: set[asyncio.Task[None]] = set()
        self._restarting: set[str] = set()
        self.restarts = Counter(
            "meshsigner_task_restarts_total",
            "Long-running tasks restarted after they failed, by task and reason (error, outage, ended)",
            ["task", "reason"],
            registry=registry,
        )

    @property
    def ready(self) -> bool:
        return not self._restarting

    @property
    def reason(self) -> str:
        return "restarting " + ", ".join(sorted(self._restarting)) if self._restarting else ""

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as the task ``name`` until shutdown, calling it again each time it fails."""
        task = asyncio.create_task(self._keep_running(name, factory), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep_running(self, name: str, factory: TaskFactory) -> None:
        delay = self._backoff_start
        while not self._stop.is_set():
            started = self._clock.monotonic()
            reason = self._report_ending(name, await _outcome(factory))
            if reason is None:
                return
            self.restarts.labels(task=name, reason=reason).inc()
            if self._clock.monotonic() - started >= self._healthy_after:
                delay = self._backoff_start
            self._restarting.add(name)
            try:
                if await sleep_unless_stopped(self._clock, self._stop, delay):
                    return
            finally:
                self._restarting.discard(name)
            logger.bind(event="task_restarted", task=name).info("restarting {}", name)
            delay = min(delay * 2, self._backoff_max)

    def _report_ending(self, name: str, error: BaseException | None) -> str | None:
        """Log how the task ended; the restart reason, or None when it ended because of shutdown."""
        bound = logger.bind(event="task_failed", task=name)
        if error is None:
            if self._stop.is_set():
                return None
            bound.error("{} ended before shutdown; restarting it", name)
            return "ended"
        if isinstance(error, self._outages):
            bound.warning("{} stopped by an outage ({}); restarting it", name, error)
            return "outage"
        bound.opt(exception=error).error("{} failed; restarting it", name)
        return "error"


async def _outcome(factory: TaskFactory) -> Exception | None:
    """Run one attempt; the exception it ended with, or None. Cancellation passes through."""
    try:
        await factory()
    except Exception as error:  # every failure is reported and restarted by the caller
        return error
    return None
