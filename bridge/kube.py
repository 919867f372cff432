"""The one door to the Kubernetes API: the only module that imports ``kubernetes``.

The official client is synchronous. Every request runs on a bounded thread pool owned by :class:`KubeClient`, behind
an asyncio token bucket (``--kube-api-qps``/``--kube-api-burst``; off with
``--disable-kubernetes-client-rate-limiter``), so the event loop never blocks and a burst of CSRs cannot open an
unbounded number of connections. Each watch streams in its own thread and hands lines to the loop with
``call_soon_threadsafe``; :class:`ListWatch` lists, watches from the list's resourceVersion, resumes from the last
seen resourceVersion after a broken stream, and relists on ``410 Gone``.

Errors (``ApiException``, urllib3 and socket errors) become the classes below; callers never see the client's own::

    KubeError
    ├── KubeUnavailable   connection refused/reset, timeout, 408, 429, 5xx  (retry may help)
    ├── KubeForbidden     401/403 (RBAC or credentials)
    ├── KubeNotFound      404
    ├── KubeConflict      409
    ├── KubeGone          410 (watch history compacted: relist)
    └── KubeInvalid       400/422 (the request itself is wrong)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from loguru import logger
from prometheus_client import CollectorRegistry, Counter

T = TypeVar("T")
Obj = dict[str, Any]

CM_GROUP, CM_VERSION = "cert-manager.io", "v1"
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read: no API call may hang a request thread for long
WATCH_SECONDS = 240  # server-side watch duration before a clean re-watch from the last resourceVersion
BACKOFF_START, BACKOFF_MAX = 0.25, 5.0


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class KubeUnavailable(KubeError):
    pass


class KubeForbidden(KubeError):
    pass


class KubeNotFound(KubeError):
    pass


class KubeConflict(KubeError):
    pass


class KubeGone(KubeError):
    pass


class KubeInvalid(KubeError):
    pass


_BY_STATUS: dict[int, type[KubeError]] = {
    401: KubeForbidden,
    403: KubeForbidden,
    408: KubeUnavailable,  # the server timed the request out: retrying may well succeed
    404: KubeNotFound,
    409: KubeConflict,
    410: KubeGone,
    400: KubeInvalid,
    422: KubeInvalid,
}


def _message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(body or "")[:300]


def map_error(exc: BaseException) -> KubeError:
    """The seam's class for anything the client library or the network raised."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        kind = _BY_STATUS.get(status, KubeUnavailable if status == 429 or status >= 500 or not status else KubeInvalid)
        return kind(status, _message(exc.body) or str(exc.reason or ""))
    return KubeUnavailable(0, f"{type(exc).__name__}: {str(exc)[:200]}")


def _read_json(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    """Blocking (runs in a pool thread): call a core-group list without the client's model classes and read and
    parse the body here, so that neither the socket read nor the parse ever happens on the event loop."""
    response = function(*args, _preload_content=False, **kwargs)
    try:
        data = json.loads(response.data)
    finally:
        with contextlib.suppress(Exception):
            response.release_conn()
    if not isinstance(data, dict):
        raise KubeUnavailable(0, f"list answered a JSON {type(data).__name__}, not an object")
    return data


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str = ""  # empty: in-cluster configuration
    qps: float = 50.0
    burst: int = 100
    rate_limiter: bool = True
    threads: int = 32


class TokenBucket:
    """client-go's flow control: ``qps`` tokens a second, up to ``burst`` saved; waiters queue in order."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = qps
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def delay(self) -> float:
        """Take one token; the seconds to wait before using it (0 when one was saved)."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        async with self._lock:
            wait = self.delay()
            if wait > 0:
                await asyncio.sleep(wait)


class KubeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "meshsigner_kube_api_requests_total",
            "Kubernetes API requests made, by verb, resource and result (HTTP status or 'error')",
            ["verb", "resource", "code"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "meshsigner_kube_watch_restarts_total",
            "Watches re-opened, by resource and reason (expired, relist, error)",
            ["resource", "reason"],
            registry=registry,
        )


@dataclass(frozen=True)
class Resource:
    """A namespaced or cluster-scoped custom resource, or one of the core resources the seam serves (group "":
    configmaps, namespaces, pods)."""

    group: str
    version: str
    plural: str
    namespaced: bool = True


CERTIFICATE_REQUESTS = Resource(CM_GROUP, CM_VERSION, "certificaterequests")
CONFIG_MAPS = Resource("", "v1", "configmaps")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
PODS = Resource("", "v1", "pods")  # namespace None: every namespace


def issuer_resource(kind: str, group: str) -> Resource:
    """Issuer/ClusterIssuer of cert-manager, or an external issuer following the same naming (plural = kind + s;
    cluster-scoped when the kind ends in ``ClusterIssuer``, as AWSPCAClusterIssuer or GoogleCASClusterIssuer do)."""
    plural = kind.lower() + "s"
    version = CM_VERSION if group == CM_GROUP else "v1"
    return Resource(group, version, plural, namespaced=not kind.endswith("ClusterIssuer"))


def load_configuration(options: KubeOptions) -> client.Configuration:
    cfg = client.Configuration()
    try:
        if options.kubeconfig:
            config.load_kube_config(config_file=options.kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = f"--kubeconfig {options.kubeconfig}" if options.kubeconfig else "in-cluster configuration"
        raise KubeError(0, f"{where}: {exc}") from None
    cfg.connection_pool_maxsize = options.threads + 4  # the watch threads get their own connections
    cfg.retries = False  # retrying is the caller's decision, not urllib3's
    return cfg


class KubeClient:
    """One ApiClient, configured once; typed async methods; blocking work on a bounded pool."""

    def __init__(self, options: KubeOptions, metrics: KubeMetrics) -> None:
        self._api = client.ApiClient(load_configuration(options))
        self._custom = client.CustomObjectsApi(self._api)
        self._core = client.CoreV1Api(self._api)
        self._authn = client.AuthenticationV1Api(self._api)
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="kube")
        self._limiter = TokenBucket(options.qps, options.burst) if options.rate_limiter else None
        self.metrics = metrics
        self.host = self._api.configuration.host

    async def _call(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._limiter is not None:
            await self._limiter.acquire()
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except Exception as exc:
            error = map_error(exc)
            self.metrics.requests.labels(verb, resource, str(error.status or "error")).inc()
            raise error from None
        self.metrics.requests.labels(verb, resource, "2xx").inc()
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._api.close()

    # --- TokenReview -------------------------------------------------------------------------------------------
    async def review_token(self, token: str, audiences: tuple[str, ...]) -> Obj:
        """The TokenReview ``status`` (never the echoed spec, which holds the token)."""
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=list(audiences)))
        review = await self._call("create", "tokenreviews", self._authn.create_token_review, body)
        return dict(self._api.sanitize_for_serialization(review.status) or {})

    # --- custom objects ----------------------------------------------------------------------------------------
    async def create(self, resource: Resource, namespace: str, body: Obj) -> Obj:
        r = resource
        return await self._call(
            "create", r.plural, self._custom.create_namespaced_custom_object, r.group, r.version, namespace, r.plural,
            body,
        )  # fmt: skip

    async def delete(self, resource: Resource, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete (only the object with ``uid`` when given); an object already gone is not an error."""
        r = resource
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid) if uid else None)
        with contextlib.suppress(KubeNotFound):
            await self._call(
                "delete", r.plural, self._custom.delete_namespaced_custom_object, r.group, r.version, namespace,
                r.plural, name, body=options,
            )  # fmt: skip

    async def replace_status(self, resource: Resource, namespace: str, name: str, body: Obj) -> Obj:
        r = resource
        return await self._call(
            "update", f"{r.plural}/status", self._custom.replace_namespaced_custom_object_status, r.group, r.version,
            namespace, r.plural, name, body,
        )  # fmt: skip

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        r = resource
        if r.group == "":
            function, *positional = self._core_read(r, namespace)
            obj = await self._call("get", r.plural, function, name, *positional)
            return dict(self._api.sanitize_for_serialization(obj))
        if r.namespaced:
            return await self._call(
                "get", r.plural, self._custom.get_namespaced_custom_object, r.group, r.version, namespace, r.plural,
                name,
            )  # fmt: skip
        return await self._call(
            "get", r.plural, self._custom.get_cluster_custom_object, r.group, r.version, r.plural, name
        )

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]:
        """Objects and the list's resourceVersion."""
        r = resource
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        if r.group == "":
            function, *positional = self._core_list(r, namespace)
            data = await self._call("list", r.plural, _read_json, function, *positional, **kwargs)
        elif r.namespaced:
            data = await self._call(
                "list", r.plural, self._custom.list_namespaced_custom_object, r.group, r.version, namespace, r.plural,
                **kwargs,
            )  # fmt: skip
        else:
            data = await self._call(
                "list", r.plural, self._custom.list_cluster_custom_object, r.group, r.version, r.plural, **kwargs
            )
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _core_list(self, resource: Resource, namespace: str | None) -> tuple[Any, ...]:
        """The core-group list function (and its positional arguments) for the core resources the seam serves."""
        if resource.plural == "namespaces":
            return (self._core.list_namespace,)
        if resource.plural == "pods":
            if namespace is None:
                return (self._core.list_pod_for_all_namespaces,)
            return (self._core.list_namespaced_pod, namespace)
        if resource.plural == "configmaps":
            return (self._core.list_namespaced_config_map, _required(namespace, resource))
        raise ValueError(f"the Kubernetes seam does not serve core {resource.plural}")

    def _core_read(self, resource: Resource, namespace: str | None) -> tuple[Any, ...]:
        """The core-group read function (and its positional arguments after the name)."""
        if resource.plural == "namespaces":
            return (self._core.read_namespace,)
        if resource.plural == "pods":
            return (self._core.read_namespaced_pod, _required(namespace, resource))
        if resource.plural == "configmaps":
            return (self._core.read_namespaced_config_map, _required(namespace, resource))
        raise ValueError(f"the Kubernetes seam does not serve core {resource.plural}")

    def open_watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> urllib3.HTTPResponse:
        """Blocking: open a watch stream (called from a watch thread, not the pool)."""
        r = resource
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_preload_content": False,
            "_request_timeout": (REQUEST_TIMEOUT[0], WATCH_SECONDS + 30),
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        try:
            if r.group == "":
                function, *positional = self._core_list(r, namespace)
                response = function(*positional, **kwargs)
            elif r.namespaced:
                response = self._custom.list_namespaced_custom_object(r.group, r.version, namespace, r.plural, **kwargs)
            else:
                response = self._custom.list_cluster_custom_object(r.group, r.version, r.plural, **kwargs)
        except Exception as exc:
            error = map_error(exc)
            self.metrics.requests.labels("watch", r.plural, str(error.status or "error")).inc()
            raise error from None
        self.metrics.requests.labels("watch", r.plural, "2xx").inc()
        return response  # type: ignore[return-value]


def _required(namespace: str | None, resource: Resource) -> str:
    if not namespace:
        raise ValueError(f"{resource.plural} is namespaced: a namespace is required")
    return namespace


def iter_lines(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(16 * 1024, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


class WatchHandler(Protocol):
    def on_relist(self, objects: list[Obj]) -> None:
        """Everything that exists now (after the first list, after a 410, after an error needing a relist)."""

    def on_event(self, kind: str, obj: Obj) -> None:
        """``ADDED``, ``MODIFIED`` or ``DELETED``."""


class ListWatch:
    """List, then watch from the list's resourceVersion; resume after a broken stream; relist on 410 Gone."""

    def __init__(
        self,
        kube: KubeClient,
        resource: Resource,
        namespace: str | None,
        handler: WatchHandler,
        *,
        label_selector: str = "",
        field_selector: str = "",
        name: str = "",
    ) -> None:
        self._kube = kube
        self._resource = resource
        self._namespace = namespace
        self._handler = handler
        self._labels = label_selector
        self._fields = field_selector
        self.name = name or resource.plural
        self.synced = False  # one full list delivered; stays true across reconnects (events resume, none lost)
        self.connected = False

    async def run(self, stop: asyncio.Event) -> None:
        resource_version = ""
        backoff = BACKOFF_START
        restarts = self._kube.metrics.watch_restarts
        while not stop.is_set():
            try:
                if not resource_version:
                    objects, resource_version = await self._kube.list(
                        self._resource, self._namespace, label_selector=self._labels, field_selector=self._fields
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:
                # A bug (a handler's on_relist, an unexpected answer): never let it end the watch silently while
                # ``synced`` stays true and the cache goes stale. Log it, back off and relist from scratch.
                self.connected = False
                resource_version = ""
                restarts.labels(self._resource.plural, "error").inc()
                logger.bind(event="watch_failed", watch=self.name).exception(
                    "watch failed unexpectedly; relisting in {:.2f}s", backoff
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream(self, resource_version: str, stop: asyncio.Event) -> str:
        """Watch until the server ends the stream; returns the last resourceVersion seen."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        holder: dict[str, Any] = {}
        closed = threading.Event()

        def post(kind: str, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: we are shutting down
                loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

        def pump() -> None:
            try:
                response = self._kube.open_watch(
                    self._resource,
                    self._namespace,
                    resource_version,
                    label_selector=self._labels,
                    field_selector=self._fields,
                )
                holder["response"] = response
                if closed.is_set():
                    response.shutdown()
                    return
                post("connected", None)
                for line in iter_lines(response):
                    post("line", line)
                post("end", None)
            except Exception as exc:
                post("error", exc if closed.is_set() else map_error(exc))

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
                    raise payload if isinstance(payload, KubeError) else map_error(payload)
                else:
                    resource_version = self._dispatch(payload, resource_version)
        finally:
            stopper.cancel()
            closed.set()
            response = holder.get("response")
            if response is not None:
                with contextlib.suppress(Exception):
                    response.shutdown()
                    response.release_conn()

    def _dispatch(self, line: bytes, resource_version: str) -> str:
        """Hand one watch event to the handler; returns the resourceVersion to resume from. A line that is not a
        watch event (not JSON, not an object, an object without an object) breaks the stream: it resumes."""
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
        new_version = str(metadata.get("resourceVersion") or resource_version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                self._handler.on_event(kind, obj)
            except Exception:
                logger.bind(event="watch_handler_error", watch=self.name).exception("watch handler failed")
        return new_version


__all__ = [
    "CERTIFICATE_REQUESTS",
    "CM_GROUP",
    "CONFIG_MAPS",
    "PODS",
    "KubeClient",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeInvalid",
    "KubeMetrics",
    "KubeNotFound",
    "KubeOptions",
    "KubeUnavailable",
    "ListWatch",
    "Obj",
    "Resource",
    "TokenBucket",
    "WatchHandler",
    "issuer_resource",
]
