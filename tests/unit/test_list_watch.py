"""How ListWatch reads one watch line (pure: no API call is made); the list+watch loop itself is tested on the plane
(tests/kube/certmanager/test_kube_seam.py)."""

from __future__ import annotations

import json

import pytest

from bridge.kube import NAMESPACES, KubeGone, KubeUnavailable, ListWatch, Obj


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Obj]] = []

    def on_relist(self, objects: list[Obj]) -> None:
        pass

    def on_event(self, kind: str, obj: Obj) -> None:
        self.events.append((kind, obj))


def _watch(handler: Recorder) -> ListWatch:
    return ListWatch(None, NAMESPACES, None, handler)  # type: ignore[arg-type]  # _dispatch never calls the API


def test_events_reach_the_handler_and_advance_the_resource_version() -> None:
    handler = Recorder()
    obj = {"metadata": {"name": "a", "resourceVersion": "7"}}
    assert _watch(handler)._dispatch(json.dumps({"type": "ADDED", "object": obj}).encode(), "5") == "7"
    assert handler.events == [("ADDED", obj)]
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert _watch(handler)._dispatch(json.dumps(bookmark).encode(), "7") == "9"


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
    handler = Recorder()
    with pytest.raises(KubeUnavailable):
        _watch(handler)._dispatch(line, "5")
    assert handler.events == []


def test_error_events() -> None:
    with pytest.raises(KubeGone):
        _watch(Recorder())._dispatch(b'{"type": "ERROR", "object": {"code": 410, "message": "too old"}}', "5")
    with pytest.raises(KubeUnavailable):
        _watch(Recorder())._dispatch(b'{"type": "ERROR", "object": {"code": "x"}}', "5")


def test_odd_metadata_keeps_the_resource_version() -> None:
    handler = Recorder()
    assert _watch(handler)._dispatch(b'{"type": "MODIFIED", "object": {"metadata": "x"}}', "5") == "5"
    assert handler.events == [("MODIFIED", {"metadata": "x"})]
