"""Scheduled pods, cluster-wide, from one pod list+watch: the facts node authorization (ztunnel impersonation) needs.

Only scheduled, non-terminal pods are asked for (field selector ``spec.nodeName!=,status.phase!=Succeeded,
status.phase!=Failed``, the scheduler's own selector plus the node): a pod that finishes leaves the watch as a
``DELETED`` event, and completed Job pods never fill the cache. Each pod is cut down to what the decision reads
(namespace, name, UID, service account, node, phase) as soon as it arrives.

Two indexes, both O(1) per request:

- ``namespace/name`` → the pod (the caller's pod, named by its bound token);
- ``(namespace, serviceAccount, node)`` → the keys of the *live* pods (Pending or Running) with that service account
  on that node. Pending counts: ztunnel asks for a workload's certificate as soon as the workload is on its node,
  before it runs. The phase is re-checked here too, so a terminal pod never counts even if the selector changes.

:meth:`PodIndex.check` answers with a :class:`NodeLookup` (a verdict and the caller's node), never an exception:
what each verdict means for the caller (PERMISSION_DENIED, UNAVAILABLE) is the signer's decision, not the bridge's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bridge.kube import PODS, ListWatch, WatchSource

SCHEDULED_LIVE_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
LIVE_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    service_account: str
    node_name: str
    phase: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES


def pod_info(obj: dict[str, Any]) -> PodInfo | None:
    """The fields the decision reads; None for an object without namespace, name or UID."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    namespace, name, uid = (str(metadata.get(key) or "") for key in ("namespace", "name", "uid"))
    if not (namespace and name and uid):
        return None
    return PodInfo(
        namespace=namespace,
        name=name,
        uid=uid,
        service_account=str(spec.get("serviceAccountName") or ""),
        node_name=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),  # a pod nobody has reported on yet is Pending
    )


class NodeVerdict(StrEnum):
    ALLOWED = "ALLOWED"
    NOT_SYNCED = "NOT_SYNCED"  # no full list yet: nothing can be decided
    CALLER_POD_NOT_FOUND = "CALLER_POD_NOT_FOUND"  # not (yet) in the cache under that name
    CALLER_POD_UID_MISMATCH = "CALLER_POD_UID_MISMATCH"  # same name, other UID (recreated pod; one side lags)
    CALLER_POD_SA_MISMATCH = "CALLER_POD_SA_MISMATCH"  # the pod runs under another service account
    CALLER_POD_NOT_LIVE = "CALLER_POD_NOT_LIVE"  # the caller's pod has finished
    OFF_NODE = "OFF_NODE"  # no live pod of the requested service account on the caller's node


@dataclass(frozen=True, slots=True)
class NodeLookup:
    verdict: NodeVerdict
    node: str = ""  # the caller pod's node, when known

    @property
    def allowed(self) -> bool:
        return self.verdict is NodeVerdict.ALLOWED


SaNode = tuple[str, str, str]  # namespace, service account, node


class PodIndex:
    """The pure part: pods by name and live pods by (namespace, service account, node). Not thread-safe; fed and
    read on the event loop only."""

    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}
        self._live: dict[SaNode, set[str]] = {}
        self.synced = False

    def __len__(self) -> int:
        return len(self._pods)

    def replace_all(self, pods: list[PodInfo]) -> None:
        self._pods = {}
        self._live = {}
        for pod in pods:
            self.upsert(pod)
        self.synced = True

    def upsert(self, pod: PodInfo) -> None:
        self._unindex(pod.key)
        self._pods[pod.key] = pod
        if pod.live and pod.service_account and pod.node_name:
            self._live.setdefault((pod.namespace, pod.service_account, pod.node_name), set()).add(pod.key)

    def remove(self, pod: PodInfo) -> None:
        """Forget the pod, unless the name now belongs to another UID (a late event of an earlier incarnation)."""
        current = self._pods.get(pod.key)
        if current is not None and current.uid == pod.uid:
            self._unindex(pod.key)
            del self._pods[pod.key]

    def _unindex(self, key: str) -> None:
        old = self._pods.get(key)
        if old is None:
            return
        slot = (old.namespace, old.service_account, old.node_name)
        keys = self._live.get(slot)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._live[slot]

    def pod(self, namespace: str, name: str) -> PodInfo | None:
        return self._pods.get(f"{namespace}/{name}")

    @property
    def live_slot_count(self) -> int:
        """How many (namespace, service account, node) slots hold live pods: bounded by the live pods, never by
        the pods seen before (an emptied slot is dropped)."""
        return len(self._live)

    def live_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        return bool(self._live.get((namespace, service_account, node)))

    def check(
        self,
        *,
        caller_namespace: str,
        caller_service_account: str,
        caller_pod_name: str,
        caller_pod_uid: str,
        namespace: str,
        service_account: str,
    ) -> NodeLookup:
        """May the node proxy running as ``caller_pod_name`` (token-bound, ``caller_pod_uid``) act for
        ``namespace/service_account``? Only if its pod is known, is that UID, runs under the token's service account,
        and a live pod of the requested service account is on the same node."""
        if not self.synced:
            return NodeLookup(NodeVerdict.NOT_SYNCED)
        caller = self.pod(caller_namespace, caller_pod_name)
        if caller is None:
            return NodeLookup(NodeVerdict.CALLER_POD_NOT_FOUND)
        if caller.uid != caller_pod_uid:
            return NodeLookup(NodeVerdict.CALLER_POD_UID_MISMATCH, caller.node_name)
        if caller.service_account != caller_service_account:
            return NodeLookup(NodeVerdict.CALLER_POD_SA_MISMATCH, caller.node_name)
        if not caller.live:
            return NodeLookup(NodeVerdict.CALLER_POD_NOT_LIVE, caller.node_name)
        if not caller.node_name or not self.live_on_node(namespace, service_account, caller.node_name):
            return NodeLookup(NodeVerdict.OFF_NODE, caller.node_name)
        return NodeLookup(NodeVerdict.ALLOWED, caller.node_name)


class PodCache(PodIndex):
    """The index fed by one cluster-wide ListWatch. ``ready`` (for /readyz) once the first list has arrived; it stays
    true across reconnects (the watch resumes; a 410 relists in one step)."""

    def __init__(self, kube: WatchSource) -> None:
        super().__init__()
        self.watch = ListWatch(kube, PODS, None, self, field_selector=SCHEDULED_LIVE_PODS, name="pods")

    @property
    def ready(self) -> bool:
        return self.synced

    @property
    def reason(self) -> str:
        return "" if self.synced else "pod list not received yet"

    def on_relist(self, objects: list[dict[str, Any]]) -> None:
        self.replace_all([pod for pod in map(pod_info, objects) if pod is not None])

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        pod = pod_info(obj)
        if pod is None:
            return
        if kind == "DELETED":
            self.remove(pod)
        else:
            self.upsert(pod)


__all__ = [
    "LIVE_PHASES",
    "SCHEDULED_LIVE_PODS",
    "NodeLookup",
    "NodeVerdict",
    "PodCache",
    "PodIndex",
    "PodInfo",
    "pod_info",
]
