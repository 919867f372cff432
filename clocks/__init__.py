"""The one clock abstraction the three packages share.

Timers (serving-certificate renewal, file watchers, sweeps, caches, backoffs) take a ``Clock`` instead of
calling ``time``/``asyncio.sleep`` directly, so tests can advance time instead of sleeping. This package
imports nothing of meshsigner's, so ``signer``, ``policies`` and ``bridge`` may all depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and deadlines)."""
        ...

    def now(self) -> datetime:
        """The wall-clock time, timezone-aware in UTC (for certificate validity)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this many seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``datetime.now(UTC)`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def sleep_unless_stopped(clock: Clock, stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` of ``clock``'s time, or less if ``stop`` is set first; True when ``stop`` is set (every
    periodic loop of the server waits this way, so shutdown never waits for a timer)."""
    if stop.is_set():
        return True
    stopped = asyncio.ensure_future(stop.wait())
    slept = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((stopped, slept), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (stopped, slept):
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
    return stop.is_set()


async def within(seconds: float, work: Coroutine[Any, Any, T], clock: Clock) -> T:
    """``work``'s result (or exception), or TimeoutError once ``seconds`` of ``clock`` time passed first; ``work``
    is cancelled then, and when the caller is cancelled (``asyncio.timeout`` on an injectable clock)."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
    if task.done():
        return task.result()
    raise TimeoutError


__all__ = ["Clock", "SystemClock", "sleep_unless_stopped", "within"]
