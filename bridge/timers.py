"""Waiting on a Clock while staying responsive to shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from clocks import Clock

T = TypeVar("T")


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


async def within(seconds: float, work: Coroutine[Any, Any, T], clock: Clock) -> T:
    """``work``'s result (or exception), or TimeoutError once ``seconds`` of ``clock`` time passed first; ``work``
    is cancelled then, and when the caller is cancelled."""
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
