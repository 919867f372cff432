"""The one clock abstraction the three packages share.

Timers (serving-certificate renewal, file watchers, sweeps, caches, backoffs) take a ``Clock`` instead of
calling ``time``/``asyncio.sleep`` directly, so tests can advance time instead of sleeping. This package
imports nothing of meshsigner's, so ``signer``, ``policies`` and ``bridge`` may all depend on it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


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


__all__ = ["Clock", "SystemClock"]
