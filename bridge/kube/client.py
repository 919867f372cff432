"""KubeClient: one ApiClient, configured once; typed async methods; every blocking call on a bounded thread pool.

The official client is synchronous. Every request runs on a thread pool owned by :class:`KubeClient`, behind an
asyncio token bucket (``--kube-api-qps``/``--kube-api-burst``; off with ``--disable-kubernetes-client-rate-limiter``),
so the event loop never blocks and a burst of CSRs cannot open an unbounded number of connections. TokenReviews and
OIDC discovery reads have their own share of that limit (:mod:`bridge.kube.rate_limit`), so a flood of reviews never
delays the signing path's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from bridge.kube.configuration import KubeOptions, load_configuration
from bridge.kube.errors import KubeNotFound, KubeUnavailable, as_kube_error
from bridge.kube.metrics import KubeMetrics
from bridge.kube.rate_limit import Budget, split_budgets
from bridge.kube.resources import CERTIFICATE_SIGNING_REQUESTS, Obj, Resource, collection_path, object_path
from clocks import Clock, SystemClock

T = TypeVar("T")

REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read: no API call may hang a request thread for long
WATCH_SECONDS = 240  # server-side watch duration before a clean re-watch from the last resourceVersion


def _json_object(data: Any, what: str) -> Obj:
    if not isinstance(data, dict):
        raise KubeUnavailable(0, f"{what} answered a JSON {type(data).__name__}, not an object")
    return data


DISCOVERY_PATHS = frozenset({"/.well-known/openid-configuration", "/openid/v1/jwks"})
MAX_DISCOVERY_BYTES = 1 << 20  # a key set is a few KB; refuse to parse anything absurd


def _send(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Obj | None = None,
    *,
    query: list[tuple[str, str]] | None = None,
    accept: str = "application/json",
    _request_timeout: Any = REQUEST_TIMEOUT,
) -> Any:
    """Blocking: send one request by path with the client's credentials; the answer's body is not read yet."""
    serialized = api.param_serialize(
        method,
        path,
        query_params=query,
        header_params={"Accept": accept, "Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    return api.call_api(*serialized, _request_timeout=_request_timeout)


def _raise_unless_success(response: Any, raw: bytes) -> None:
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=raw.decode(errors="replace"), data=None)


def _open_stream(api: client.ApiClient, path: str, query: list[tuple[str, str]], timeout: Any) -> urllib3.HTTPResponse:
    """Blocking: open a GET whose body the caller streams (a watch); a refusal is raised with its status."""
    response = _send(api, "GET", path, query=query, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        try:
            raw: bytes = response.read() or b""
        finally:
            with contextlib.suppress(Exception):  # a connection broken mid-answer must still go back to the pool
                response.response.release_conn()
        _raise_unless_success(response, raw)
    stream: urllib3.HTTPResponse = response.response
    return stream


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    query = [("labelSelector", label_selector)] if label_selector else []
    return query + ([("fieldSelector", field_selector)] if field_selector else [])


def _rest_json(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Obj | None = None,
    *,
    query: list[tuple[str, str]] | None = None,
    accept: str = "application/json",
    max_bytes: int | None = None,
    _request_timeout: Any = REQUEST_TIMEOUT,
) -> Obj:
    """Blocking (runs in a pool thread): one REST call by path with the client's credentials, JSON in and out,
    without the model classes (so one code path serves core objects, Leases, custom resources and the non-resource
    discovery documents alike). ``max_bytes`` refuses to parse an absurdly large answer."""
    response = _send(api, method, path, body, query=query, accept=accept, _request_timeout=_request_timeout)
    try:
        raw: bytes = response.read() or b""
        _raise_unless_success(response, raw)
        if max_bytes is not None and len(raw) > max_bytes:
            raise KubeUnavailable(0, f"{method} {path}: answered {len(raw)} bytes")
        data: Any = json.loads(raw) if raw else {}
    except ValueError:  # the server's answer, not our bug
        raise KubeUnavailable(0, f"{method} {path}: answer is not JSON") from None
    finally:
        with contextlib.suppress(Exception):  # a connection broken mid-answer must still go back to the pool
            response.response.release_conn()
    return _json_object(data, f"{method} {path}")


@dataclass(frozen=True, slots=True)
class AccessReview:
    """A SelfSubjectAccessReview's answer: may this client do ``verb`` on the resource?"""

    allowed: bool
    reason: str


class KubeClient:
    def __init__(self, options: KubeOptions, metrics: KubeMetrics, *, clock: Clock | None = None) -> None:
        self._api = client.ApiClient(load_configuration(options))
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="kube")
        self.clock: Clock = clock or SystemClock()
        self._budgets = (
            split_budgets(options.qps, options.burst, options.token_review_share, self.clock)
            if options.rate_limiter
            else None
        )
        self.metrics = metrics
        self.host = self._api.configuration.host

    @contextlib.contextmanager
    def _counted(self, verb: str, resource: str) -> Iterator[None]:
        """Count one API call by its answer; an API or transport failure becomes KubeError, anything else (a bug)
        propagates as it is."""
        try:
            yield
        except Exception as exc:
            error = as_kube_error(exc)
            code = str(error.status or "error") if error is not None else "error"
            self.metrics.requests.labels(verb, resource, code).inc()
            if error is None:
                raise
            raise error from None
        self.metrics.requests.labels(verb, resource, "2xx").inc()

    async def _call(
        self,
        verb: str,
        resource: str,
        fn: Callable[..., T],
        *args: Any,
        budget: Budget = Budget.DEFAULT,
        **kwargs: Any,
    ) -> T:
        """Run one blocking client call on the pool, after its budget's rate limit. API and transport failures
        become KubeError; anything else (a bug) propagates as it is."""
        if self._budgets is not None:
            await self._budgets[budget].acquire()
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        loop = asyncio.get_running_loop()
        with self._counted(verb, resource):
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):  # closing a pool whose connections already broke
            self._api.close()  # type: ignore[no-untyped-call]  # the generated ApiClient is not annotated

    # --- TokenReview -------------------------------------------------------------------------------------------
    async def review_token(self, token: str, audiences: tuple[str, ...]) -> Obj:
        """The TokenReview ``status`` (never the echoed spec, which holds the token)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        review = await self._rest("create", "tokenreviews", "POST", path, body, budget=Budget.REVIEW)
        status = review.get("status")
        return dict(status) if isinstance(status, dict) else {}

    # --- OIDC discovery ----------------------------------------------------------------------------------------
    async def get_discovery_document(self, path: str) -> Obj:
        """GET one of the API server's service-account issuer discovery documents (``/.well-known/openid-
        configuration``, ``/openid/v1/jwks``) as a JSON object; on the review budget."""
        if path not in DISCOVERY_PATHS:
            raise ValueError(f"{path} is not an OIDC discovery path")
        return await self._call(
            "get", "oidc-discovery", _rest_json, self._api, "GET", path,
            accept="application/json, application/jwk-set+json", max_bytes=MAX_DISCOVERY_BYTES, budget=Budget.REVIEW,
        )  # fmt: skip

    # --- objects: every served resource (core, Lease, custom; namespaced or cluster-scoped) by its REST path ----
    async def _rest(self, verb: str, label: str, method: str, path: str, body: Obj | None = None, **kwargs: Any) -> Obj:
        return await self._call(verb, label, _rest_json, self._api, method, path, body, **kwargs)

    async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        """Create ``body`` (``namespace`` is ignored for a cluster-scoped resource)."""
        return await self._rest("create", resource.plural, "POST", object_path(resource, namespace), body)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        """Read one object (KubeNotFound when absent)."""
        return await self._rest("get", resource.plural, "GET", object_path(resource, namespace, name))

    async def replace(self, resource: Resource, namespace: str | None, name: str, body: Obj) -> Obj:
        """Replace (PUT) an object. ``body.metadata.resourceVersion`` makes it conditional: a concurrent change
        answers KubeConflict instead of being overwritten."""
        return await self._rest("update", resource.plural, "PUT", object_path(resource, namespace, name), body)

    async def replace_status(self, resource: Resource, namespace: str | None, name: str, body: Obj) -> Obj:
        """Replace (PUT) an object's ``status`` subresource."""
        path = object_path(resource, namespace, name) + "/status"
        return await self._rest("update", f"{resource.plural}/status", "PUT", path, body)

    async def delete(self, resource: Resource, namespace: str | None, name: str, uid: str | None = None) -> None:
        """Delete (only the object with ``uid`` when given); an object already gone is not an error."""
        path = object_path(resource, namespace, name)
        options: Obj | None = {"preconditions": {"uid": uid}} if uid else None
        with contextlib.suppress(KubeNotFound):
            await self._rest("delete", resource.plural, "DELETE", path, options)

    async def list(
        self, resource: Resource, namespace: str | None, *, label_selector: str = "", field_selector: str = ""
    ) -> tuple[list[Obj], str]:
        """Objects and the list's resourceVersion (``namespace`` None: every namespace, where allowed)."""
        path = collection_path(resource, namespace)
        query = _selectors(label_selector, field_selector)
        data = await self._rest("list", resource.plural, "GET", path, query=query)
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

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
        path = collection_path(resource, namespace)
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(WATCH_SECONDS))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        query += _selectors(label_selector, field_selector)
        with self._counted("watch", resource.plural):
            return _open_stream(self._api, path, query, (REQUEST_TIMEOUT[0], WATCH_SECONDS + 30))

    async def serves(self, resource: Resource) -> bool:
        """Whether the API server serves ``resource`` (its group/version discovery lists the plural)."""
        path = f"/api/{resource.version}" if resource.is_core else f"/apis/{resource.group}/{resource.version}"
        try:
            listing = await self._rest("get", resource.plural, "GET", path)
        except KubeNotFound:
            return False
        return any(isinstance(r, dict) and r.get("name") == resource.plural for r in listing.get("resources") or [])

    async def update_approval(self, name: str, body: Obj) -> Obj:
        """PUT a CertificateSigningRequest's ``approval`` subresource (its Approved/Denied conditions)."""
        path = object_path(CERTIFICATE_SIGNING_REQUESTS, None, name) + "/approval"
        return await self._rest("update", "certificatesigningrequests/approval", "PUT", path, body)

    async def may(
        self, verb: str, group: str, resource: str, *, name: str = "", subresource: str = "", namespace: str = ""
    ) -> AccessReview:
        """A SelfSubjectAccessReview: whether this client's own identity may do ``verb`` on the resource."""
        attributes: Obj = {"verb": verb, "group": group, "resource": resource}
        if name:
            attributes["name"] = name
        if subresource:
            attributes["subresource"] = subresource
        if namespace:
            attributes["namespace"] = namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        answer = await self._rest("create", "selfsubjectaccessreviews", "POST", path, body)
        status = answer.get("status") or {}
        return AccessReview(
            bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")
        )
