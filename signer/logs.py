"""Log set-up (loguru, text or JSON) and a per-reason rate limit so a retrying fleet cannot flood the logs."""

from __future__ import annotations

import sys
import time

from loguru import logger

_KLOG_LEVELS = {"1": "INFO", "2": "INFO", "3": "DEBUG", "4": "DEBUG", "5": "TRACE"}
_NAMED = {"trace", "debug", "info", "warning", "error", "critical"}
TEXT_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message} {extra}"


def level_name(value: str) -> str:
    """istio-csr takes klog verbosity 1-5; we also accept level names."""
    lowered = value.strip().lower()
    if lowered in _KLOG_LEVELS:
        return _KLOG_LEVELS[lowered]
    if lowered in _NAMED:
        return lowered.upper()
    raise ValueError(f"unknown log level {value!r}")


def logs_info(level: str) -> bool:
    """Whether INFO lines (decision records among them) pass the configured level."""
    return level_name(level) in ("TRACE", "DEBUG", "INFO")


def configure_logging(level: str, log_format: str) -> None:
    logger.remove()
    if log_format == "json":
        logger.add(sys.stderr, level=level_name(level), serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level_name(level),
            backtrace=False,
            diagnose=False,  # never render local variables: they may hold tokens or keys
            format=TEXT_FORMAT,
        )


class RateLimiter:
    """Allows one event per key per interval and counts what it held back."""

    def __init__(self, interval_seconds: float = 5.0) -> None:
        self._interval = interval_seconds
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(may log now, how many were suppressed since the last allowed one)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
