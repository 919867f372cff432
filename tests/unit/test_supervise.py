"""serve's supervision of its long-lived tasks: one that dies (or ends early) stops the process with a failure, instead
of leaving a stale cache behind a process that still answers."""

from __future__ import annotations

import asyncio

from loguru import logger

from signer.serve import supervise


async def _run(coroutine, stop: asyncio.Event, name: str = "pod-watch"):  # type: ignore[no-untyped-def]
    failures: list[str] = []
    errors: list[str] = []
    sink = logger.add(lambda message: errors.append(str(message)), level="ERROR")
    try:
        task = supervise(asyncio.create_task(coroutine, name=name), stop, failures)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done-callbacks run on the next loop turn
    finally:
        logger.remove(sink)
    return failures, errors


async def test_a_task_that_raises_stops_the_process() -> None:
    async def broken() -> None:
        raise AttributeError("'list' object has no attribute 'get'")

    stop = asyncio.Event()
    failures, errors = await _run(broken(), stop)
    assert stop.is_set()
    assert failures == ["pod-watch"]
    assert len(errors) == 1 and "pod-watch failed" in errors[0] and "AttributeError" in errors[0]


async def test_a_task_that_ends_before_stop_stops_the_process() -> None:
    async def quits() -> None:
        return None

    stop = asyncio.Event()
    failures, errors = await _run(quits(), stop)
    assert stop.is_set() and failures == ["pod-watch"]
    assert "ended unexpectedly" in errors[0]


async def test_ending_on_stop_or_being_cancelled_is_normal() -> None:
    stop = asyncio.Event()

    async def until_stopped() -> None:
        await stop.wait()

    async def stopper() -> None:
        await asyncio.sleep(0.01)
        stop.set()

    waiter = asyncio.create_task(stopper())
    failures, errors = await _run(until_stopped(), stop)
    await waiter
    assert (failures, errors) == ([], [])

    other = asyncio.Event()
    failures = []
    task = supervise(asyncio.create_task(asyncio.sleep(10), name="policy-watch"), other, failures)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert failures == [] and not other.is_set()
