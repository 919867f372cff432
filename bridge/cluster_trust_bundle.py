"""The root bundle as a ``ClusterTrustBundle`` (``--cluster-trust-bundle-name``), which current Istio can read
roots from instead of the per-namespace ConfigMaps.

Published only when the API server serves the resource (``certificates.k8s.io`` v1, v1beta1 or v1alpha1, newest
first; it is behind a feature gate and a runtime-config switch before GA): otherwise the controller says so once
and does nothing. A name of the form ``<domain>:<path>:<suffix>`` is signer-linked (``spec.signerName`` =
``<domain>/<path>``, which needs the ``attest`` verb on that signer); any other name is an unlinked bundle.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Protocol

from loguru import logger

from bridge.controllers import ControllerMetrics, follow_roots
from bridge.kube import CTB_VERSIONS, Obj, Resource, cluster_trust_bundles
from bridge.object_keeper import KeeperApi, ObjectKeeper
from clocks import Clock

CONTROLLER = "cluster-trust-bundle"


class DiscoveryApi(KeeperApi, Protocol):
    async def serves(self, resource: Resource) -> bool: ...


def signer_name(bundle_name: str) -> str:
    """The signer a bundle name links to ("" for an unlinked name)."""
    head, sep, _ = bundle_name.rpartition(":")
    return head.replace(":", "/", 1) if sep and ":" in head else ""


def desired_bundle(version: str, name: str, pem: str, current: Obj | None) -> Obj | None:
    if current is None:
        spec: Obj = {"trustBundle": pem}
        if signer_name(name):
            spec["signerName"] = signer_name(name)
        return {
            "apiVersion": f"certificates.k8s.io/{version}",
            "kind": "ClusterTrustBundle",
            "metadata": {"name": name},
            "spec": spec,
        }
    if (current.get("spec") or {}).get("trustBundle") == pem:
        return None
    body = copy.deepcopy(current)
    body.setdefault("spec", {})["trustBundle"] = pem
    return body


class ClusterTrustBundlePublisher:
    def __init__(
        self, api: DiscoveryApi, name: str, roots: Callable[[], str], *, metrics: ControllerMetrics, clock: Clock
    ) -> None:
        self._api = api
        self.name = name
        self._roots = roots
        self._metrics = metrics
        self._clock = clock

    async def _served_version(self) -> str:
        for version in CTB_VERSIONS:
            if await self._api.serves(cluster_trust_bundles(version)):
                return version
        return ""

    async def run(self, stop: asyncio.Event) -> None:
        version = await self._served_version()
        if not version:
            logger.bind(event="cluster_trust_bundle_unavailable").warning(
                "--cluster-trust-bundle-name {}: the API server serves no ClusterTrustBundle API "
                "(certificates.k8s.io v1/v1beta1/v1alpha1); not publishing one",
                self.name,
            )
            return
        pem = self._roots()

        async def decide(current: Obj | None) -> Obj | None:
            return desired_bundle(version, self.name, pem, current) if pem else None

        keeper = ObjectKeeper(
            self._api, cluster_trust_bundles(version), None, self.name, decide,
            controller=CONTROLLER, metrics=self._metrics, clock=self._clock,
        )  # fmt: skip

        def roots_changed(latest: str) -> None:
            nonlocal pem
            pem = latest
            keeper.trigger()

        follower = asyncio.create_task(
            follow_roots(self._roots, pem, roots_changed, stop, self._clock), name="cluster-trust-bundle-roots"
        )
        try:
            await keeper.run(stop)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
