"""Trust distribution: the ConfigMap ``istio-ca-root-cert`` (key ``root-cert.pem``, label ``istio.io/config=true``)
in every selected namespace, holding the active root bundle, as istiod (and istio-csr) write it.

- Namespaces: every one, or those matching ``--configmap-namespace-selector`` (label-selector syntax, evaluated by
  the API server in the namespace list+watch). Terminating namespaces are skipped. A namespace that stops matching
  keeps its ConfigMap as it is (istio-csr's behaviour: its pods still mount it) but is no longer updated.
- The ConfigMaps are watched cluster-wide by name, so an edit is reverted and a delete recreated at once.
  Any key besides ``root-cert.pem`` is removed; other labels, annotations and ``binaryData`` are kept.
- The roots come from a callable (the pinned RootBundle, or the local CA's roots). It is polled each second (a
  string comparison); a change enqueues every selected namespace.
- ``--max-concurrent-reconciles`` workers take namespaces from one de-duplicated queue; a failed one is retried with
  its own backoff (0.5 s doubling to 30 s, reset by a success), so a namespace that keeps refusing the write (a
  quota, a policy) costs one call per 30 s, not two a second. Every write carries the resourceVersion it was based on.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

from loguru import logger

from bridge.controllers import ControllerMetrics, follow_roots
from bridge.kube import CONFIG_MAPS, NAMESPACES, KubeConflict, KubeError, KubeNotFound, ListWatch, Obj
from bridge.object_keeper import KeeperApi, write_decided
from clocks import Clock, sleep_unless_stopped

CONFIG_MAP_NAME = "istio-ca-root-cert"
ROOT_KEY = "root-cert.pem"
LABEL_KEY, LABEL_VALUE = "istio.io/config", "true"
CONTROLLER = "root-configmap"
RETRY_START, RETRY_MAX = 0.5, 30.0


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _namespace_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def desired_config_map(namespace: str, pem: str, current: Obj | None) -> Obj | None:
    """The ConfigMap to write (None when ``current`` is right already). Foreign keys are dropped; other labels,
    annotations, binaryData and ownerReferences are kept."""
    if current is None:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIG_MAP_NAME, "namespace": namespace, "labels": {LABEL_KEY: LABEL_VALUE}},
            "data": {ROOT_KEY: pem},
        }
    labels = (current.get("metadata") or {}).get("labels") or {}
    if current.get("data") == {ROOT_KEY: pem} and labels.get(LABEL_KEY) == LABEL_VALUE:
        return None
    body = copy.deepcopy(current)
    body["data"] = {ROOT_KEY: pem}
    body.setdefault("metadata", {}).setdefault("labels", {})[LABEL_KEY] = LABEL_VALUE
    return body


class TrustDistributor:
    def __init__(
        self,
        api: KeeperApi,
        roots: Callable[[], str],
        *,
        namespace_selector: str = "",
        workers: int = 1,
        metrics: ControllerMetrics,
        clock: Clock,
    ) -> None:
        self._api = api
        self._roots = roots
        self._workers = max(1, workers)
        self._metrics = metrics
        self._clock = clock
        self._namespaces: dict[str, Obj] = {}  # the selected namespaces, by name
        self._config_maps: dict[str, Obj] = {}  # istio-ca-root-cert, by namespace
        self._pem = ""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._retry_delays: dict[str, float] = {}  # the next retry's delay, by namespace, while its writes fail
        self._namespace_watch = ListWatch(
            api, NAMESPACES, None, _NamespaceEvents(self), label_selector=namespace_selector, name="namespaces"
        )
        self._config_map_watch = ListWatch(
            api,
            CONFIG_MAPS,
            None,
            _ConfigMapEvents(self),
            field_selector=f"metadata.name={CONFIG_MAP_NAME}",
            name=f"configmaps {CONFIG_MAP_NAME}",
        )

    @property
    def synced(self) -> bool:
        return self._namespace_watch.synced and self._config_map_watch.synced

    def enqueue(self, namespace: str) -> None:
        if namespace and namespace not in self._queued:
            self._queued.add(namespace)
            self._queue.put_nowait(namespace)

    def enqueue_all(self) -> None:
        for namespace in sorted(self._namespaces):
            self.enqueue(namespace)

    async def run(self, stop: asyncio.Event) -> None:
        self._pem = self._roots()
        tasks = [
            asyncio.create_task(self._namespace_watch.run(stop), name="watch-namespaces"),
            asyncio.create_task(self._config_map_watch.run(stop), name="watch-root-configmaps"),
            asyncio.create_task(
                follow_roots(self._roots, self._pem, self._roots_changed, stop, self._clock), name="follow-roots"
            ),
            *(asyncio.create_task(self._work(stop), name=f"root-configmap-{i}") for i in range(self._workers)),
        ]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopper}:
                task.result()  # a bug in one part: raise it (the controller runner restarts the whole controller)
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _roots_changed(self, pem: str) -> None:
        self._pem = pem
        logger.bind(event="roots_changed", controller=CONTROLLER).info(
            "root bundle changed: updating {} in {} namespaces", CONFIG_MAP_NAME, len(self._namespaces)
        )
        self.enqueue_all()

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            namespace = await self._queue.get()
            self._queued.discard(namespace)
            if await self._reconcile(namespace):
                self._retry_delays.pop(namespace, None)
                continue
            delay = self._retry_delays.get(namespace, RETRY_START)
            self._retry_delays[namespace] = min(delay * 2, RETRY_MAX)
            asyncio.create_task(self._retry_later(namespace, stop, delay))  # noqa: RUF006  # ends with its sleep

    async def _retry_later(self, namespace: str, stop: asyncio.Event, delay: float) -> None:
        if not await sleep_unless_stopped(self._clock, stop, delay):
            self.enqueue(namespace)

    async def _reconcile(self, namespace: str) -> bool:
        """Make one namespace's ConfigMap right; False when it should be retried."""
        pem = self._pem
        selected = self._namespaces.get(namespace)
        if not pem or selected is None or (selected.get("status") or {}).get("phase") == "Terminating":
            self._metrics.count(CONTROLLER, "skipped")
            return True
        current = self._config_maps.get(namespace)
        try:
            try:
                written = await self._write(namespace, pem, current)
            except (KubeConflict, KubeNotFound):  # our cached copy was stale: read it and try once more
                try:
                    current = await self._api.get(CONFIG_MAPS, namespace, CONFIG_MAP_NAME)
                except KubeNotFound:
                    current = None
                written = await self._write(namespace, pem, current)
        except KubeConflict:
            self._metrics.count(CONTROLLER, "conflict")
            return False
        except KubeError as exc:
            self._metrics.count(CONTROLLER, "error")
            logger.bind(event="reconcile_failed", controller=CONTROLLER, namespace=namespace).warning(
                "{}/{}: {}", namespace, CONFIG_MAP_NAME, exc
            )
            return False
        self._metrics.count(CONTROLLER, written)
        return True

    async def _write(self, namespace: str, pem: str, current: Obj | None) -> str:
        body = desired_config_map(namespace, pem, current)
        result, stored = await write_decided(self._api, CONFIG_MAPS, namespace, CONFIG_MAP_NAME, current, body)
        if stored is not None:
            self._config_maps[namespace] = stored
        return result

    # --- watch events ------------------------------------------------------------------------------------------
    def namespaces_listed(self, objects: list[Obj]) -> None:
        self._namespaces = {_name(o): o for o in objects if _name(o)}
        self.enqueue_all()

    def namespace_event(self, kind: str, obj: Obj) -> None:
        name = _name(obj)
        if kind == "DELETED":  # gone, or no longer matching the selector: its ConfigMap is left alone
            self._namespaces.pop(name, None)
            self._retry_delays.pop(name, None)
            return
        self._namespaces[name] = obj
        self.enqueue(name)

    def config_maps_listed(self, objects: list[Obj]) -> None:
        self._config_maps = {_namespace_of(o): o for o in objects}
        self.enqueue_all()

    def config_map_event(self, kind: str, obj: Obj) -> None:
        namespace = _namespace_of(obj)
        if kind == "DELETED":
            self._config_maps.pop(namespace, None)
        else:
            self._config_maps[namespace] = obj
        if namespace in self._namespaces:
            self.enqueue(namespace)


class _NamespaceEvents:
    def __init__(self, owner: TrustDistributor) -> None:
        self._owner = owner

    def on_relist(self, objects: list[Obj]) -> None:
        self._owner.namespaces_listed(objects)

    def on_event(self, kind: str, obj: Obj) -> None:
        self._owner.namespace_event(kind, obj)


class _ConfigMapEvents:
    def __init__(self, owner: TrustDistributor) -> None:
        self._owner = owner

    def on_relist(self, objects: list[Obj]) -> None:
        self._owner.config_maps_listed(objects)

    def on_event(self, kind: str, obj: Obj) -> None:
        self._owner.config_map_event(kind, obj)
