"""Work a test runs beside the code under test: test-side controllers polling in threads (an approver acting as
another component would), and a backend's own loops (its watches) running until they report ready."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def polling_threads(join_seconds: float = 5.0) -> Iterator[Callable[[Callable[[threading.Event], None]], None]]:
    """Yields ``start(loop)``: runs ``loop(stop)`` in a daemon thread; every loop is told to stop (and joined) on
    exit."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(loop: Callable[[threading.Event], None]) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=loop, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))

    try:
        yield start
    finally:
        for stop, _ in started:
            stop.set()
        for _, thread in started:
            thread.join(join_seconds)


@contextlib.asynccontextmanager
async def running_loops(
    loops: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, object]]],
    ready: Callable[[], bool],
    ready_timeout: float = 30.0,
) -> AsyncIterator[None]:
    """Runs each ``loop(stop)`` as a task and enters once ``ready()`` holds; on exit the loops are stopped and
    cancelled."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        async with asyncio.timeout(ready_timeout):
            while not ready():
                await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
