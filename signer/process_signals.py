"""SIGINT and SIGTERM end the server cleanly, and what runs on the way out.

A signal sets the stop event the serve loop waits on; ``serve`` then turns readiness off, drains the calls already
accepted (``--shutdown-grace-period``), and runs the shutdown hooks before the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from loguru import logger

from clocks import Clock

ShutdownHook = Callable[[], Awaitable[None]]
HOOK_TIMEOUT_SECONDS = 5.0  # a hook that hangs must not keep a terminating pod from exiting


def stop_on_signals(stop: asyncio.Event, *, also: Callable[[], None] | None = None) -> None:
    """From now on, SIGINT or SIGTERM sets ``stop`` (drain, close, exit 0) instead of killing the process, and
    calls ``also`` once (the ``--workers`` parent forwards the signal to its workers there)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        first = not stop.is_set()
        logger.bind(event="signal", signal=signum.name).info("{} received: shutting down", signum.name)
        stop.set()
        if first and also is not None:
            also()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


class ShutdownHooks:
    """Async callbacks run once, in the order added, after the gRPC server drained and the background tasks
    stopped, and before the Kubernetes client closes and the process exits. The place for work that must happen
    on the way out, such as releasing a leader-election Lease so another replica leads at once. Each hook is
    bounded by ``timeout`` seconds; a failing or hanging hook is logged and the next one still runs."""

    def __init__(self, clock: Clock, timeout: float = HOOK_TIMEOUT_SECONDS) -> None:
        self._clock = clock
        self._timeout = timeout
        self._hooks: list[tuple[str, ShutdownHook]] = []

    def add(self, name: str, hook: ShutdownHook) -> None:
        self._hooks.append((name, hook))

    async def run(self) -> None:
        hooks, self._hooks = self._hooks, []
        for name, hook in hooks:
            try:
                await self._bounded(hook)
            except Exception as exc:  # every hook runs, whatever the one before it did
                logger.bind(event="shutdown_hook_failed", hook=name).opt(exception=exc).error(
                    "shutdown hook {} failed", name
                )
            else:
                logger.bind(event="shutdown_hook_done", hook=name).info("shutdown hook {} done", name)

    async def _bounded(self, hook: ShutdownHook) -> None:
        """Run ``hook``; cancel it and raise TimeoutError after ``timeout`` seconds of the clock."""
        running = asyncio.ensure_future(hook())
        timer = asyncio.ensure_future(self._clock.sleep(self._timeout))
        try:
            await asyncio.wait((running, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            raise TimeoutError(f"still running after {self._timeout}s")
        running.result()
