"""Policy durations: Go's form (``1h30m``, ``90s``) plus a ``d`` suffix for days, always whole seconds.

Certificates carry second precision, so a policy that says ``1500ms`` cannot mean what it says; the loader
rejects it rather than rounding. Formatting follows Go's ``time.Duration.String()`` so messages read like
istiod's and cert-manager's (``72h0m0s``).
"""

from __future__ import annotations

import math
import re

MAX_POLICY_DURATION = 3650 * 86400  # 10 years: the longest duration a policy document may write
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> int:
    """Whole seconds in ``text``. Raises ValueError with the reason when it is malformed or not whole seconds."""
    if text == "0":
        return 0
    if not text:
        raise ValueError("empty duration")
    position, total = 0, 0.0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go form plus d, such as 24h, 90m, 7d)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not math.isfinite(total) or total > 2**62:
        raise ValueError(f"duration {text[:40]!r} is too long")
    seconds = round(total)
    if abs(total - seconds) > 1e-6:
        raise ValueError(f"duration {text!r} is not a whole number of seconds")
    return seconds


def format_duration(seconds: int) -> str:
    """Go's ``Duration.String()`` for whole seconds: 259200 -> ``72h0m0s``, 60 -> ``1m0s``, 0 -> ``0s``."""
    sign = "-" if seconds < 0 else ""
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def describe_duration(seconds: int) -> str:
    """The compact form a policy author writes: 604800 -> ``7d``, 7200 -> ``2h``, 5400 -> ``1h30m``."""
    if seconds > 0 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
