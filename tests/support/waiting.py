"""Waiting for something to happen instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LOOP_TURNS = 10_000


async def until_true(condition: Callable[[], bool], what: str, turns: int = LOOP_TURNS) -> None:
    """Let the event loop run until ``condition()`` holds (tasks driven by a ManualClock get there without real
    time passing); fails naming ``what`` if the loop goes idle that many turns without it."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0, poll: float = 0.05) -> None:
    """Poll ``condition()`` (a fact about another process: a log line, a probe answer) until it holds. ``timeout``
    only bounds a failure; a passing test returns as soon as the event happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(poll)
