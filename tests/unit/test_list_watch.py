"""ListWatch: how one watch line is read (pure), and how the list+watch loop treats API errors (retried after a
backoff on the injected clock) and bugs (they end the loop, with the watch marked not synced). The loop against
a real API server is tested on the plane (tests/kube/certmanager/test_kube_seam.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.kube import NAMESPACES, KubeGone, KubeUnavailable, ListWatch, Obj, parse_watch_line
from tests.support.clock import ManualClock
from tests.support.watch_source import NoApi


class Recorder:
    def __init__(self) -> None:
        self.relists: list[list[Obj]] = []

    def on_relist(self, objects: list[Obj]) -> None:
        self.relists.append(objects)

    def on_event(self, kind: str, obj: Obj) -> None:
        pass


def test_events_carry_the_resource_version_to_resume_from() -> None:
    obj = {"metadata": {"name": "a", "resourceVersion": "7"}}
    line = parse_watch_line(json.dumps({"type": "ADDED", "object": obj}).encode(), "5")
    assert (line.kind, line.obj, line.resource_version) == ("ADDED", obj, "7")
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert parse_watch_line(json.dumps(bookmark).encode(), "7").resource_version == "9"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'"ADDED"',
        b"42",
        b"null",
        b'{"type": "ADDED", "object": []}',
        b'{"type": "ADDED", "object": "x"}',
        b'{"type": "ERROR", "object": ["x"]}',
    ],
)
def test_a_line_that_is_not_a_watch_event_breaks_the_stream(line: bytes) -> None:
    """Not an AttributeError (which ended the watch task while ``synced`` stayed true): KubeUnavailable, so the
    watch resumes from the last resourceVersion."""
    with pytest.raises(KubeUnavailable):
        parse_watch_line(line, "5")


def test_error_events() -> None:
    with pytest.raises(KubeGone):
        parse_watch_line(b'{"type": "ERROR", "object": {"code": 410, "message": "too old"}}', "5")
    with pytest.raises(KubeUnavailable):
        parse_watch_line(b'{"type": "ERROR", "object": {"code": "x"}}', "5")


def test_odd_metadata_keeps_the_resource_version() -> None:
    line = parse_watch_line(b'{"type": "MODIFIED", "object": {"metadata": "x"}}', "5")
    assert (line.kind, line.obj, line.resource_version) == ("MODIFIED", {"metadata": "x"}, "5")


async def test_an_unreachable_api_is_retried_after_the_backoff() -> None:
    clock = ManualClock()
    stop = asyncio.Event()
    calls: list[float] = []

    async def lister() -> tuple[list[Obj], str]:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise KubeUnavailable(503, "apiserver restarting")
        stop.set()
        return [{"metadata": {"name": "default"}}], "5"

    handler = Recorder()
    watch = ListWatch(NoApi(clock, lister), NAMESPACES, None, handler)
    task = asyncio.create_task(watch.run(stop))
    for _ in range(50):
        if clock.sleeper_count:
            break
        await asyncio.sleep(0)
    assert calls == [0.0] and not watch.synced
    await clock.advance(0.2)
    assert calls == [0.0]  # still backing off
    await clock.advance(0.05)
    await asyncio.wait_for(task, 5)
    assert calls == [0.0, 0.25]
    assert watch.synced and handler.relists == [[{"metadata": {"name": "default"}}]]


class BrokenHandler(Recorder):
    def on_relist(self, objects: list[Obj]) -> None:
        raise TypeError("a bug in the handler")


async def test_a_bug_ends_the_watch_instead_of_looking_like_an_outage() -> None:
    """The supervisor logs the traceback and restarts the task; until then the watch is not synced (deny, don't
    guess), and the bug is never retried as if the API were down."""

    async def lister() -> tuple[list[Obj], str]:
        return [], "1"

    watch = ListWatch(NoApi(ManualClock(), lister), NAMESPACES, None, BrokenHandler())
    with pytest.raises(TypeError, match="a bug in the handler"):
        await asyncio.wait_for(watch.run(asyncio.Event()), 5)
    assert not watch.synced and not watch.connected
