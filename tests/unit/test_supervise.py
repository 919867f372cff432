"""The task supervisor: a long-running task (a watch, a reload loop) that fails or ends before shutdown is reported,
counted and restarted with backoff, and the server says it is not ready while the task waits to restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

from bridge.errors import BackendUnavailable
from signer.task_supervisor import TaskFactory, TaskSupervisor
from tests.support.clock import ManualClock
from tests.support.waiting import until_true


class Run:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.clock = ManualClock()
        self.registry = CollectorRegistry()
        self.supervisor = TaskSupervisor(
            self.stop, clock=self.clock, registry=self.registry, outages=(BackendUnavailable,)
        )

    def restarts(self, reason: str, task: str = "pod-watch") -> float:
        value = self.registry.get_sample_value("meshsigner_task_restarts_total", {"task": task, "reason": reason})
        return value or 0.0


@pytest.fixture
def log() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING", format="{level} {message}")
    yield lines
    logger.remove(sink)


def failing_then_waiting(run: Run, error: Exception | None, attempts: list[int]) -> TaskFactory:
    """A task that fails its first attempt (raises ``error``, or returns when None), then runs until stop."""

    async def task() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            if error is not None:
                raise error
            return
        await run.stop.wait()

    return task


async def test_a_programming_error_is_logged_with_its_traceback_counted_and_restarted(log: list[str]) -> None:
    run = Run()
    attempts: list[int] = []
    run.supervisor.start("pod-watch", failing_then_waiting(run, AttributeError("'list' has no 'get'"), attempts))
    await until_true(lambda: run.clock.sleeper_count == 1, "the restart backoff armed")
    assert run.restarts("error") == 1 and attempts == [1]
    assert len(log) == 1 and "pod-watch failed" in log[0] and "Traceback" in log[0] and "AttributeError" in log[0]
    assert not run.supervisor.ready and "pod-watch" in run.supervisor.reason
    await run.clock.advance(1.0)
    await until_true(lambda: attempts == [1, 2], "the task restarted")
    assert run.supervisor.ready and not run.stop.is_set()
    run.stop.set()
    await run.supervisor.close()


async def test_an_outage_is_one_line_without_traceback(log: list[str]) -> None:
    run = Run()
    attempts: list[int] = []
    run.supervisor.start("pod-watch", failing_then_waiting(run, BackendUnavailable("API_DOWN", "503"), attempts))
    await until_true(lambda: run.clock.sleeper_count == 1, "the restart backoff armed")
    assert run.restarts("outage") == 1 and run.restarts("error") == 0
    assert len(log) == 1 and log[0].startswith("WARNING") and "Traceback" not in log[0]
    await run.clock.advance(1.0)
    await until_true(lambda: attempts == [1, 2], "the task restarted")
    run.stop.set()
    await run.supervisor.close()


async def test_a_task_that_ends_before_shutdown_is_restarted(log: list[str]) -> None:
    run = Run()
    attempts: list[int] = []
    run.supervisor.start("pod-watch", failing_then_waiting(run, None, attempts))
    await until_true(lambda: run.clock.sleeper_count == 1, "the restart backoff armed")
    assert run.restarts("ended") == 1 and "ended before shutdown" in log[0]
    await run.clock.advance(1.0)
    await until_true(lambda: attempts == [1, 2], "the task restarted")
    run.stop.set()
    await run.supervisor.close()


async def test_the_backoff_doubles_between_failures() -> None:
    run = Run()
    attempts: list[int] = []

    async def always_fails() -> None:
        attempts.append(len(attempts) + 1)
        raise RuntimeError("still broken")

    run.supervisor.start("policy-watch", always_fails)
    await until_true(lambda: run.clock.sleeper_count == 1, "the first backoff armed")
    await run.clock.advance(1.0)  # first wait: 1 s
    await until_true(lambda: len(attempts) == 2 and run.clock.sleeper_count == 1, "the second backoff armed")
    await run.clock.advance(1.5)  # the second wait is 2 s: not over yet
    assert len(attempts) == 2
    await run.clock.advance(0.5)
    await until_true(lambda: len(attempts) == 3, "the third attempt")
    assert run.restarts("error", task="policy-watch") == 3
    run.stop.set()
    await run.supervisor.close()


async def test_ending_on_stop_or_being_cancelled_is_normal(log: list[str]) -> None:
    run = Run()
    started = asyncio.Event()

    async def until_stopped() -> None:
        started.set()
        await run.stop.wait()

    run.supervisor.start("jwks-watch", until_stopped)
    await started.wait()
    run.stop.set()
    await run.supervisor.close()
    assert log == [] and run.restarts("ended", task="jwks-watch") == 0 and run.supervisor.ready

    other = Run()
    running = asyncio.Event()

    async def forever() -> None:
        running.set()
        await asyncio.Event().wait()

    other.supervisor.start("policy-watch", forever)
    await running.wait()
    await other.supervisor.close()  # shutdown cancels: not a failure
    assert log == [] and not other.stop.is_set() and other.supervisor.ready
