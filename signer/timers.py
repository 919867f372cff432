"""Waiting on a ``clocks.Clock`` that a stop event may cut short (every periodic loop of the server)."""

from __future__ import annotations

import asyncio
import contextlib

from clocks import Clock


async def sleep_unless_stopped(clock: Clock, stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` of ``clock``'s time, or less if ``stop`` is set first. True when ``stop`` is set."""
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
