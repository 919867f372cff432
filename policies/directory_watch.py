"""Watching a policy directory: poll its content on a ``Clock`` and report a change once it has been stable.

Polling the content (not inotify, not mtimes) also covers ConfigMap mounts, whose symlinks are swapped atomically.
A change is reported only after ``debounce`` seconds without another change, so a half-written set (an editor
saving file by file, ``kubectl cp`` of several files) is never loaded. Reading runs in a worker thread; timing
uses the injected clock, so tests advance time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from clocks import Clock
from policies.loader import policy_files, read_sources
from policies.problems import Problem

# A sub-directory that may hold a shadow set: named like settings.shadowPolicySet (one DNS label).
_SET_DIRECTORY = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """The policy files of a directory as read at one moment, and what could not be read; ``subsets`` holds the
    same for each sub-directory named like a set (the candidates for ``settings.shadowPolicySet``)."""

    sources: tuple[tuple[str, str], ...]  # (file name, text)
    problems: tuple[Problem, ...]
    digest: str  # changes whenever a file, its name or a read problem changes, here or in a sub-set
    subsets: tuple[tuple[str, DirectorySnapshot], ...] = ()

    def subset(self, name: str) -> DirectorySnapshot | None:
        return next((snapshot for subset, snapshot in self.subsets if subset == name), None)


def read_snapshot(directory: Path, *, with_subsets: bool = True) -> DirectorySnapshot:
    """Read the ``*.yaml``/``*.yml`` files of ``directory`` now, and of its set sub-directories (blocking: run it
    in a thread on a loop)."""
    sources, problems = read_sources(policy_files([directory]))
    subsets: list[tuple[str, DirectorySnapshot]] = []
    if with_subsets:
        try:
            children = sorted(c for c in directory.iterdir() if c.is_dir() and _SET_DIRECTORY.fullmatch(c.name))
        except OSError:
            children = []  # the directory itself is unreadable: the read problems above already say so
        subsets = [(child.name, read_snapshot(child, with_subsets=False)) for child in children]
    digest = _digest(sources, problems)
    if subsets:
        digest = hashlib.sha256((digest + "".join(f"\0{n}\0{s.digest}" for n, s in subsets)).encode()).hexdigest()
    return DirectorySnapshot(tuple(sources), tuple(problems), digest, tuple(subsets))


async def stable_changes(
    directory: Path,
    *,
    clock: Clock,
    stop: asyncio.Event,
    known_digest: str | None,
    poll_interval: float,
    debounce: float,
) -> AsyncIterator[DirectorySnapshot]:
    """Yield a snapshot each time the content differs from the last one yielded (or ``known_digest``) and has
    stayed the same for ``debounce`` seconds. Polls every ``poll_interval`` seconds until ``stop`` is set."""
    seen = known_digest
    changed_at: float | None = None
    while not await _sleep_unless_stopped(clock, poll_interval, stop):
        try:
            snapshot = await asyncio.to_thread(read_snapshot, directory)
        except Exception:  # keep watching: the next poll may read it fine
            logger.exception("policy: cannot scan {}", directory)
            continue
        if snapshot.digest != seen:
            seen, changed_at = snapshot.digest, clock.monotonic()
        if changed_at is None or clock.monotonic() - changed_at < debounce:
            continue
        changed_at = None
        yield snapshot


async def _sleep_unless_stopped(clock: Clock, seconds: float, stop: asyncio.Event) -> bool:
    """Sleep ``seconds`` on ``clock``; True (at once) when ``stop`` is or becomes set."""
    if stop.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((sleeper, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopped.cancel()
    return stop.is_set()


def _digest(sources: Sequence[tuple[str, str]], problems: Sequence[Problem]) -> str:
    hasher = hashlib.sha256()
    for name, text in sources:
        hasher.update(name.encode() + b"\0" + text.encode() + b"\0")
    for problem in problems:
        hasher.update(str(problem).encode())
    return hasher.hexdigest()
