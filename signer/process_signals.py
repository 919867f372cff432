"""SIGINT and SIGTERM end the server cleanly: they set the stop event the serve loop waits on."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals(stop: asyncio.Event) -> None:
    """From now on, SIGINT or SIGTERM sets ``stop`` (drain, close, exit 0) instead of killing the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
