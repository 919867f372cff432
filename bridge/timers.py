"""Waiting on a Clock while staying responsive to shutdown."""

from __future__ import annotations

import asyncio

from clocks import Clock


async def wait_unless_stopped(stop: asyncio.Event, seconds: float, clock: Clock) -> bool:
    """Wait ``seconds`` of ``clock`` time, or less if ``stop`` is set first; True when stopped."""
    if stop.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()
    return stop.is_set()
