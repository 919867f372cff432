"""Compiling each distinct text once within a load: large sets repeat the same few templates and conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Compiled = TypeVar("Compiled")


class CompileOnce(Generic[Compiled]):
    """``compile(text)``, remembered per text; a refused text raises a fresh ``error`` with the same message each
    time (a stored exception is never raised twice: its traceback would grow)."""

    def __init__(self, compile: Callable[[str], Compiled], error: type[Exception]) -> None:
        self._compile = compile
        self._error = error
        self._known: dict[str, Compiled | Exception] = {}

    def __call__(self, text: str) -> Compiled:
        known = self._known.get(text)
        if known is None:
            try:
                known = self._compile(text)
            except self._error as exc:
                known = exc
            self._known[text] = known
        if isinstance(known, Exception):
            raise self._error(str(known))
        return known
