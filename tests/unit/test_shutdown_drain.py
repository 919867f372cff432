"""Draining on SIGTERM (accepted calls finish, new ones are refused, all within the grace period) and the shutdown
hooks leader election will use to release its Lease."""

from __future__ import annotations

import asyncio

import pytest

from signer.draining import CallDrain
from signer.errors import TemporarilyUnavailable
from signer.process_signals import ShutdownHooks
from tests.support.clock import ManualClock
from tests.support.waiting import until_true


async def call(drain: CallDrain, release: asyncio.Event) -> None:
    with drain.accept():
        await release.wait()


async def test_close_waits_for_the_calls_in_flight_and_refuses_new_ones() -> None:
    clock = ManualClock()
    drain = CallDrain(clock, quiet_seconds=0.2)
    release = asyncio.Event()
    in_flight = asyncio.create_task(call(drain, release))
    await until_true(lambda: drain.active == 1, "the call is in flight")
    closing = asyncio.create_task(drain.close(30))
    await until_true(lambda: clock.sleeper_count == 1, "close waits on the grace timer")
    with pytest.raises(TemporarilyUnavailable) as refused, drain.accept():
        pass
    assert refused.value.reason == "SHUTTING_DOWN"
    await clock.advance(10)
    assert not closing.done()  # the accepted call still runs, within the grace period
    release.set()
    await in_flight
    await until_true(lambda: clock.sleeper_count == 1, "the quiet spell after the last arrival")
    await clock.advance(0.2)
    assert await closing is True


async def test_the_grace_period_bounds_the_wait() -> None:
    clock = ManualClock()
    drain = CallDrain(clock)
    stuck = asyncio.create_task(call(drain, asyncio.Event()))
    await until_true(lambda: drain.active == 1, "the call is in flight")
    closing = asyncio.create_task(drain.close(30))
    await until_true(lambda: clock.sleeper_count == 1, "close waits on the grace timer")
    await clock.advance(30)
    assert await closing is False
    stuck.cancel()


async def test_an_idle_server_closes_after_one_quiet_spell() -> None:
    clock = ManualClock()
    drain = CallDrain(clock, quiet_seconds=0.2)
    closing = asyncio.create_task(drain.close(30))
    await until_true(lambda: clock.sleeper_count == 1, "the quiet spell")
    await clock.advance(0.2)
    assert await closing is True


async def test_hooks_run_in_order_and_a_failing_or_hanging_one_does_not_stop_the_next() -> None:
    ran: list[str] = []

    async def release_lease() -> None:
        ran.append("release-lease")

    async def broken() -> None:
        ran.append("broken")
        raise RuntimeError("API down")

    async def hanging() -> None:
        ran.append("hanging")
        await asyncio.Event().wait()

    clock = ManualClock()
    hooks = ShutdownHooks(clock, timeout=5)
    hooks.add("broken", broken)
    hooks.add("hanging", hanging)
    hooks.add("release-lease", release_lease)
    running = asyncio.create_task(hooks.run())
    await until_true(lambda: ran[-1:] == ["hanging"] and clock.sleeper_count == 1, "the hanging hook is timed")
    await clock.advance(5)
    await running
    assert ran == ["broken", "hanging", "release-lease"]
    await hooks.run()  # they run once
    assert ran == ["broken", "hanging", "release-lease"]
