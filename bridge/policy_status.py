"""The policy objects' status, written by the leader only (``--policy-source kubernetes``).

Every replica watches and decides; one writer keeps ``kubectl get identitypolicies`` honest: per object the
``Accepted`` and ``Ready`` conditions (with ``observedGeneration`` and the exact error) and the rule count, and the
active revision on PolicySettings. What each object should show comes from the caller (the policy store, wired by
``serve``) as plain dicts keyed by (kind, namespace, name); the objects themselves come from the policy objects'
watch cache, so a round reads nothing from the API. A status is written only when it differs, conditionally on the
object's resourceVersion (a concurrent change answers 409 and is looked at again next round), and only for the
generation it was decided for (a newer generation waits for its own build).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from bridge.certificate_request_watch import condition_time
from bridge.kube import KubeClient, KubeConflict, KubeError, KubeNotFound, Obj, Resource
from bridge.policy_objects import IDENTITY_POLICIES, POLICY_SETTINGS, PolicyObjectWatch
from clocks import Clock, sleep_unless_stopped

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
DesiredStatuses = Callable[[], Mapping[ObjectKey, Mapping[str, Any]]]
RESOURCES = {"IdentityPolicy": IDENTITY_POLICIES, "PolicySettings": POLICY_SETTINGS}
EVENTS = Resource("events.k8s.io", "v1", "events")  # the events API (the seam serves no core events)
CLUSTER_EVENTS_NAMESPACE = "default"  # where Events about a cluster-scoped object go (as kubectl shows them)


class StatusWriter:
    """Writes what ``desired`` says onto the objects ``objects`` holds, every ``interval`` seconds while leading."""

    def __init__(
        self,
        kube: KubeClient,
        objects: PolicyObjectWatch,
        desired: DesiredStatuses,
        *,
        clock: Clock,
        interval: float = 1.0,
        instance: str = "meshsigner",
    ) -> None:
        self._kube = kube
        self._objects = objects
        self._desired = desired
        self._clock = clock
        self._interval = interval
        self._instance = instance  # the Events' reportingInstance (this process)

    async def run(self, stop: asyncio.Event) -> None:
        """The leader-only controller: reconcile, wait, until ``stop`` (leadership lost, or shutdown)."""
        while not stop.is_set():
            if self._objects.synced:
                await self.reconcile()
            if await sleep_unless_stopped(self._clock, stop, self._interval):
                return

    async def reconcile(self) -> int:
        """One round; returns how many statuses were written."""
        current = {_key(obj): obj for obj in self._objects.objects()}
        written = 0
        for key, status in self._desired().items():
            obj = current.get(key)
            if obj is None or (obj.get("metadata") or {}).get("generation") != status.get("observedGeneration"):
                continue  # deleted, or a newer generation whose build has not finished: its own round will come
            found = obj.get("status")
            old: Mapping[str, Any] = found if isinstance(found, dict) else {}
            new = with_transition_times(old, status, condition_time(self._clock.now()))
            if _comparable(old) == _comparable(new):
                continue
            kind, namespace, name = key
            try:
                await self._kube.replace_status(RESOURCES[kind], namespace or None, name, {**obj, "status": new})
            except (KubeConflict, KubeNotFound):
                continue  # changed or deleted meanwhile: the watch brings the new version
            written += 1
            if _newly_rejected(old, new):
                await self._rejection_event(obj, key, new)
            logger.bind(event="policy_status_written", object=f"{kind} {namespace}/{name}").debug(
                "status of {} {}/{} written", kind, namespace, name
            )
        return written

    async def _rejection_event(self, obj: Obj, key: ObjectKey, status: Mapping[str, Any]) -> None:
        """A Warning Event ``Rejected`` on the object, with its errors (``kubectl describe`` and event pipelines
        show it); an Event that cannot be written is logged, never retried (the status says the same)."""
        kind, namespace, name = key
        metadata = obj.get("metadata") or {}
        accepted = _condition(status, "Accepted")
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}-", "namespace": namespace or CLUSTER_EVENTS_NAMESPACE},
            "regarding": {
                "apiVersion": str(obj.get("apiVersion") or ""),
                "kind": kind,
                "name": name,
                **({"namespace": namespace} if namespace else {}),
                "uid": str(metadata.get("uid") or ""),
                "resourceVersion": str(metadata.get("resourceVersion") or ""),
            },
            "type": "Warning",
            "reason": "Rejected",
            "action": "Compile",
            "note": f"generation {status.get('observedGeneration')}: {accepted.get('message', '')}"[:1024],
            "reportingController": "meshsigner.io/policy-status",
            "reportingInstance": self._instance,
            "eventTime": self._clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        try:
            await self._kube.create(EVENTS, namespace or CLUSTER_EVENTS_NAMESPACE, event)
        except KubeError as exc:
            logger.bind(event="policy_event_failed", object=f"{kind} {namespace}/{name}").warning(
                "could not record the rejection of {} {}/{} as an Event: {}", kind, namespace, name, exc
            )


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    found = (c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == kind)
    return next(found, {})


def _newly_rejected(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``new`` says Accepted=False for a generation ``old`` had not already said it for."""
    before, after = _condition(old, "Accepted"), _condition(new, "Accepted")
    if after.get("status") != "False":
        return False
    return before.get("status") != "False" or before.get("observedGeneration") != after.get("observedGeneration")


def with_transition_times(old: Mapping[str, Any], new: Mapping[str, Any], now: str) -> dict[str, Any]:
    """``new`` with each condition's ``lastTransitionTime``: kept from ``old`` when its status did not change."""
    before = {c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, Mapping)}
    conditions = []
    for condition in new.get("conditions") or []:
        previous = before.get(condition.get("type"))
        same = previous is not None and previous.get("status") == condition.get("status")
        moment = previous.get("lastTransitionTime") if same and previous is not None else None
        conditions.append({**condition, "lastTransitionTime": moment or now})
    return {**new, "conditions": conditions}


def _comparable(status: Mapping[str, Any]) -> Any:
    return {
        **status,
        "conditions": sorted(
            (dict(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)),
            key=lambda c: str(c.get("type")),
        ),
    }


def _key(obj: Obj) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return str(obj.get("kind") or ""), str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
