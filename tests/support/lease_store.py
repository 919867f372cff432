"""An in-memory stand-in for the Lease API (bridge.leader_election.LeaseApi), with the API server's optimistic
concurrency (a write with a stale resourceVersion answers 409) and a switch that makes it unreachable."""

from __future__ import annotations

import copy

from bridge.kube import KubeConflict, KubeNotFound, KubeUnavailable, Obj, Resource


class LeaseStore:
    def __init__(self) -> None:
        self.lease: Obj | None = None
        self.down = False
        self._version = 0

    def _check(self) -> None:
        if self.down:
            raise KubeUnavailable(503, "API server unavailable (test)")

    def _stored(self, body: Obj) -> Obj:
        self._version += 1
        stored = copy.deepcopy(body)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.lease = stored
        return copy.deepcopy(stored)

    async def get_object(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        self._check()
        if self.lease is None:
            raise KubeNotFound(404, "no lease")
        return copy.deepcopy(self.lease)

    async def create_object(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        self._check()
        if self.lease is not None:
            raise KubeConflict(409, "exists")
        return self._stored(body)

    async def replace(self, resource: Resource, namespace: str | None, name: str, body: Obj) -> Obj:
        self._check()
        current = (self.lease or {}).get("metadata", {}).get("resourceVersion")
        if body.get("metadata", {}).get("resourceVersion") != current:
            raise KubeConflict(409, "stale resourceVersion")
        return self._stored(body)

    @property
    def holder(self) -> str:
        return str(((self.lease or {}).get("spec") or {}).get("holderIdentity") or "")
