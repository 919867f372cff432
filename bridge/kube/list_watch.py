"""ListWatch: list, then watch from the list's resourceVersion; resume after a broken stream; relist on 410 Gone.

Each watch streams in its own thread (not the request pool: a watch holds its connection for minutes) and hands
lines to the event loop with ``call_soon_threadsafe``. API and transport failures are retried with a backoff on
the injected clock; any other exception (a bug in a handler, in this module) ends :meth:`ListWatch.run` with the
exception itself, after marking the watch not synced, so the supervisor logs it with its traceback and restarts
the task, which relists from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from loguru import logger

from bridge.kube.errors import KubeError, KubeGone, KubeUnavailable, as_kube_error
from bridge.kube.metrics import KubeMetrics
from bridge.kube.resources import Obj, Resource
from clocks import Clock, sleep_unless_stopped

BACKOFF_START, BACKOFF_MAX = 0.25, 5.0
OBJECT_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})


class WatchHandler(Protocol):
    def on_relist(self, objects: list[Obj]) -> None:
        """Everything that exists now (after the first list, after a 410, after an error needing a relist)."""

    def on_event(self, kind: str, obj: Obj) -> None:
        """``ADDED``, ``MODIFIED`` or ``DELETED``."""


class WatchSource(Protocol):
    """What ListWatch needs of the API (KubeClient is one)."""

    metrics: KubeMetrics
    clock: Clock

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]: ...

    def open_watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> urllib3.HTTPResponse: ...


@dataclass(frozen=True, slots=True)
class WatchLine:
    kind: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ...
    obj: Obj
    resource_version: str  # to resume from after this line


def parse_watch_line(line: bytes, resource_version: str) -> WatchLine:
    """One watch event. A line that is not a watch event (not JSON, not an object, an object without an object)
    raises KubeUnavailable: the stream is broken and resumes. An ERROR event raises its error (410: KubeGone)."""
    try:
        event = json.loads(line)
    except ValueError:
        raise KubeUnavailable(0, "undecodable watch line") from None
    if not isinstance(event, dict):
        raise KubeUnavailable(0, f"watch line is a JSON {type(event).__name__}, not an event")
    kind, obj = event.get("type"), event.get("object", {})
    if not isinstance(obj, dict):
        raise KubeUnavailable(0, f"watch event object is a JSON {type(obj).__name__}")
    if kind == "ERROR":
        code = obj.get("code")
        code = code if isinstance(code, int) else 0
        raise (KubeGone if code == 410 else KubeUnavailable)(code, str(obj.get("message", ""))[:200])
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    return WatchLine(str(kind), obj, str(metadata.get("resourceVersion") or resource_version))


def iter_lines(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(16 * 1024, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


class ListWatch:
    def __init__(
        self,
        source: WatchSource,
        resource: Resource,
        namespace: str | None,
        handler: WatchHandler,
        *,
        label_selector: str = "",
        field_selector: str = "",
        name: str = "",
    ) -> None:
        self._source = source
        self._resource = resource
        self._namespace = namespace
        self._handler = handler
        self._label_selector = label_selector
        self._field_selector = field_selector
        self.name = name or resource.plural
        self.synced = False  # one full list delivered; stays true across reconnects (events resume, none lost)
        self.connected = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        except Exception:
            # A bug: the cache may have missed events. Not synced (deny rather than guess) until a restart relists.
            self.synced = False
            self.connected = False
            raise

    async def _run(self, stop: asyncio.Event) -> None:
        resource_version = ""
        backoff = BACKOFF_START
        restarts = self._source.metrics.watch_restarts
        while not stop.is_set():
            try:
                if not resource_version:
                    objects, resource_version = await self._source.list(
                        self._resource,
                        self._namespace,
                        label_selector=self._label_selector,
                        field_selector=self._field_selector,
                    )
                    self._handler.on_relist(objects)
                    self.synced = True
                resource_version = await self._stream(resource_version, stop)
                backoff = BACKOFF_START
                restarts.labels(self._resource.plural, "expired").inc()
            except KubeGone:
                logger.bind(event="watch_relist", watch=self.name).info("watch history expired (410): relisting")
                restarts.labels(self._resource.plural, "relist").inc()
                resource_version = ""
            except KubeError as exc:
                self.connected = False
                restarts.labels(self._resource.plural, "error").inc()
                logger.bind(event="watch_error", watch=self.name).warning(
                    "watch broken ({}); retrying in {:.2f}s", exc, backoff
                )
                await sleep_unless_stopped(self._source.clock, stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream(self, resource_version: str, stop: asyncio.Event) -> str:
        """Watch until the server ends the stream; returns the last resourceVersion seen."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        opened: list[urllib3.HTTPResponse] = []
        closed = threading.Event()

        def post(kind: str, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: we are shutting down
                loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

        def pump() -> None:
            try:
                response = self._source.open_watch(
                    self._resource,
                    self._namespace,
                    resource_version,
                    label_selector=self._label_selector,
                    field_selector=self._field_selector,
                )
                opened.append(response)
                if closed.is_set():
                    response.shutdown()
                    return
                post("connected", None)
                for line in iter_lines(response):
                    post("line", line)
                post("end", None)
            except Exception as exc:  # handed to the loop, which decides: KubeError retries, a bug propagates
                post("error", as_kube_error(exc) or exc)

        thread = threading.Thread(target=pump, name=f"watch-{self.name}", daemon=True)
        thread.start()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return resource_version
                kind, payload = getter.result()
                if kind == "connected":
                    self.connected = True
                elif kind == "end":
                    return resource_version
                elif kind == "error":
                    raise payload
                else:
                    resource_version = self._deliver(payload, resource_version)
        finally:
            stopper.cancel()
            closed.set()
            for response in opened:
                with contextlib.suppress(Exception):  # the stream may already be broken or closed
                    response.shutdown()
                    response.release_conn()

    def _deliver(self, line: bytes, resource_version: str) -> str:
        """Hand one watch line to the handler; returns the resourceVersion to resume from."""
        parsed = parse_watch_line(line, resource_version)
        if parsed.kind in OBJECT_EVENTS:
            self._handler.on_event(parsed.kind, parsed.obj)
        return parsed.resource_version
