"""Node authorization for node proxies (ztunnel) that ask for certificates on behalf of the pods on their node.

``CertificateService`` has already checked that the caller is a trusted node account and that the impersonated ID is
``spiffe://<our td>/ns/<ns>/sa/<sa>``. This decides the rest from the pod cache (``bridge/pods.py``):

================================  =================  =============================================================
situation                         code               why
================================  =================  =============================================================
token not bound to a pod          PERMISSION_DENIED  deterministic: the same token never names a pod
pod cache not synced yet          UNAVAILABLE        nothing is known yet: never allow, never deny
caller pod not in the cache       UNAVAILABLE        the TokenReview just proved the pod exists with this UID (the
                                                     API server checks bound objects), so a miss is informer lag
caller pod UID differs            UNAVAILABLE        a pod recreated under the same name; one side lags
caller pod runs as another SA     PERMISSION_DENIED  deterministic (``spec.serviceAccountName`` is immutable)
caller pod finished               PERMISSION_DENIED  deterministic (Succeeded/Failed is final)
no live pod of the SA on its node PERMISSION_DENIED  the node proxy does not host that workload
================================  =================  =============================================================

A miss caused by a token whose pod was deleted within the TokenReview cache window (30 s) is also UNAVAILABLE; the
next review after the cache expires rejects the token itself (UNAUTHENTICATED). None of these paths can allow.
"""

from __future__ import annotations

from typing import Protocol

from bridge.pods import NodeLookup, NodeVerdict
from signer.auth.base import WorkloadIdentity
from signer.errors import NotPermitted, RequestRejected, TemporarilyUnavailable

_REFUSALS: dict[NodeVerdict, tuple[type[RequestRejected], str]] = {
    NodeVerdict.NOT_SYNCED: (TemporarilyUnavailable, "IMPERSONATION_PODS_NOT_SYNCED"),
    NodeVerdict.CALLER_POD_NOT_FOUND: (TemporarilyUnavailable, "IMPERSONATION_CALLER_POD_UNKNOWN"),
    NodeVerdict.CALLER_POD_UID_MISMATCH: (TemporarilyUnavailable, "IMPERSONATION_CALLER_POD_UID_MISMATCH"),
    NodeVerdict.CALLER_POD_SA_MISMATCH: (NotPermitted, "IMPERSONATION_CALLER_POD_SA_MISMATCH"),
    NodeVerdict.CALLER_POD_NOT_LIVE: (NotPermitted, "IMPERSONATION_CALLER_POD_NOT_LIVE"),
    NodeVerdict.OFF_NODE: (NotPermitted, "IMPERSONATION_OFF_NODE"),
}


class PodLookup(Protocol):
    """What the authorizer needs from the pod cache."""

    def check(
        self,
        *,
        caller_namespace: str,
        caller_service_account: str,
        caller_pod_name: str,
        caller_pod_uid: str,
        namespace: str,
        service_account: str,
    ) -> NodeLookup: ...


class PodNodeAuthorizer:
    """``signer.service.NodeAuthorizer`` over the pod cache; raises on every refusal, returns on an allow."""

    def __init__(self, pods: PodLookup) -> None:
        self._pods = pods

    async def authorize(self, node: WorkloadIdentity, namespace: str, service_account: str) -> None:
        if not node.pod_name or not node.pod_uid:
            raise NotPermitted(
                "IMPERSONATION_UNBOUND_TOKEN", f"{node.principal}: the token is not bound to a pod (no pod name/UID)"
            )
        lookup = self._pods.check(
            caller_namespace=node.namespace,
            caller_service_account=node.service_account,
            caller_pod_name=node.pod_name,
            caller_pod_uid=node.pod_uid,
            namespace=namespace,
            service_account=service_account,
        )
        if lookup.allowed:
            return
        error, reason = _REFUSALS[lookup.verdict]
        where = f" on node {lookup.node!r:.100}" if lookup.node else ""
        raise error(
            reason,
            f"{node.principal} pod {node.pod_name!r:.100}{where} may not act for {namespace}/{service_account}: "
            f"{lookup.verdict.value}",
        )


__all__ = ["PodLookup", "PodNodeAuthorizer"]
