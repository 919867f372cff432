"""Durations as people write them: Go's form (``1h30m``, ``90s``, ``500ms``) plus a ``d`` suffix for days.

One grammar and one set of error messages for the policy documents and the command-line flags:

- ``parse_duration`` gives whole seconds. Certificates carry second precision, so a policy that says ``1500ms``
  cannot mean what it says; it is rejected rather than rounded. Lifetime flags use it too.
- ``parse_duration_seconds`` gives float seconds, for flags that are timeouts or intervals (``500ms`` is fine).

Both raise ``ValueError`` with a message that quotes the text and says what is wrong; callers prefix the field
path or the flag name. ``format_duration`` prints Go's ``time.Duration.String()`` so messages read like istiod's
and cert-manager's (``72h0m0s``); ``describe_duration`` prints the compact form a policy author writes (``7d``).
"""

from __future__ import annotations

import math
import re

MAX_POLICY_DURATION = 3650 * 86400  # 10 years: the longest duration a policy document may write
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_LONGEST = 2**62  # seconds; anything longer is a typo and would overflow a datetime


def parse_duration(text: str) -> int:
    """Whole seconds in ``text`` (``"0"``, ``"90s"``, ``"1h30m"``, ``"7d"``).

    Raises ValueError when it is empty, malformed, absurdly long or not a whole number of seconds.
    """
    total = parse_duration_seconds(text)
    seconds = round(total)
    if abs(total - seconds) > 1e-6:
        raise ValueError(f"duration {text!r} is not a whole number of seconds")
    return seconds


def parse_duration_seconds(text: str) -> float:
    """Seconds in ``text``, fractions allowed (``"500ms"`` -> 0.5). Never negative: the grammar has no sign.

    Raises ValueError when it is empty, malformed or absurdly long, with the same messages as ``parse_duration``.
    """
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("empty duration")
    position, total = 0, 0.0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go form plus d, such as 24h, 90m, 7d)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not math.isfinite(total) or total > _LONGEST:
        raise ValueError(f"duration {text[:40]!r} is too long")
    return total


def format_duration(seconds: float) -> str:
    """Go's ``Duration.String()``: 259200 -> ``72h0m0s``, 60 -> ``1m0s``, 0 -> ``0s``, 1.5 -> ``1.5s``,
    0.5 -> ``500ms``. Whole seconds are the common case; fractions are kept to the nanosecond, as in Go."""
    nanoseconds = round(seconds * 1_000_000_000)
    sign = "-" if nanoseconds < 0 else ""
    nanoseconds = abs(nanoseconds)
    if nanoseconds == 0:
        return "0s"
    if nanoseconds < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanoseconds >= size:
                return f"{sign}{_decimal(nanoseconds, size)}{unit}"
    whole, fraction = divmod(nanoseconds, 1_000_000_000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{_decimal(secs * 1_000_000_000 + fraction, 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return f"{sign}{text}"


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` in decimal without trailing zeros: (1500, 1000) -> ``1.5``, (2000, 1000) -> ``2``."""
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def describe_duration(seconds: int) -> str:
    """The compact form a policy author writes: 604800 -> ``7d``, 7200 -> ``2h``, 5400 -> ``1h30m``."""
    if seconds > 0 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"
