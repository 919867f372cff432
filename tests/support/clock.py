"""A clock that tests advance by hand, for code that takes a ``clocks.Clock``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class ManualClock:
    """Time stands still until ``advance`` moves it; sleepers wake when their deadline is reached."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall_start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._elapsed)

    @property
    def sleeper_count(self) -> int:
        """How many coroutines are waiting on this clock (tests wait for a timer to be armed)."""
        return sum(1 for _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._elapsed + seconds, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward and let every sleeper whose deadline passed run until it blocks again."""
        self._elapsed += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self._elapsed]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._elapsed]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)
        for _ in range(5):  # let woken tasks reach their next await
            await asyncio.sleep(0)
