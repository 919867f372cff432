"""A test's read-modify-replace of an object a controller (ours, cert-manager's, an elector) also writes.

The replace carries the resourceVersion that was read, so a write in between answers 409 Conflict; like any
client, the test then reads again and re-applies its change rather than failing on the race.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kubernetes import client

T = TypeVar("T")


def edit(read: Callable[[], T], change: Callable[[T], object], replace: Callable[[T], object], attempts: int = 10) -> T:
    """Apply ``change`` to a fresh ``read()`` and ``replace`` it, again on a conflict; the object as sent."""
    for _ in range(attempts - 1):
        current = read()
        change(current)
        try:
            replace(current)
            return current
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    current = read()
    change(current)
    replace(current)
    return current
