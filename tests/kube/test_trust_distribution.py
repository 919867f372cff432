"""Trust distribution on the real plane: the root ConfigMap appears in selected namespaces (also ones created
later), edits are reverted, deletes recreated, foreign keys removed, unselected namespaces left alone, and a root
rotation reaches every namespace; the ClusterTrustBundle is published and follows the roots. The 500-namespace
rotation figure in docs/cluster-duties.md comes from ``test_rotation_reaches_500_namespaces``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.cluster_trust_bundle import ClusterTrustBundlePublisher
from bridge.controllers import ControllerMetrics
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.root_bundle import RootBundle
from bridge.trust_distribution import CONFIG_MAP_NAME, ROOT_KEY, TrustDistributor
from clocks import SystemClock
from tests.support.clock import ManualClock
from tests.support.kube_edits import edit

NAME = CONFIG_MAP_NAME


@dataclass
class Roots:
    pem: str

    def __call__(self) -> str:
        return self.pem


@dataclass
class Running:
    label: str
    roots: Roots
    metrics: ControllerMetrics
    registry: CollectorRegistry


def _ca_pem(pki, name: str) -> str:
    return pki.make_ca(name, days=30).cert_pem.decode()


async def _until(condition: Callable[[], object], what: str, timeout: float = 20) -> float:
    started = time.monotonic()
    while True:
        if await asyncio.to_thread(condition):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


def _read(core: client.CoreV1Api, namespace: str) -> client.V1ConfigMap | None:
    try:
        return core.read_namespaced_config_map(NAME, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


@contextlib.asynccontextmanager
async def distributing(kube_plane, pki) -> AsyncIterator[Running]:
    """A TrustDistributor for namespaces labelled with a label of this test only (others are left alone)."""
    label = f"meshsigner-trust-{secrets.token_hex(3)}"
    roots = Roots(_ca_pem(pki, "root-a"))
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    distributor = TrustDistributor(
        seam, roots, namespace_selector=f"{label}=yes", workers=4, metrics=metrics, clock=SystemClock()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(distributor.run(stop))
    try:
        yield Running(label, roots, metrics, registry)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        seam.close()


async def test_root_config_map_is_kept_in_every_selected_namespace(kube_plane, pki, kube_api, make_namespace):
    async with distributing(kube_plane, pki) as distribution:
        core = client.CoreV1Api(kube_api)
        selected = make_namespace("sel", labels={distribution.label: "yes"})
        other = make_namespace("other")
        await _until(lambda: _read(core, selected), "ConfigMap in the selected namespace")
        cm = _read(core, selected)
        assert cm.data == {ROOT_KEY: distribution.roots.pem}
        assert cm.metadata.labels["istio.io/config"] == "true"

        # a namespace created later gets it too; the unselected one (created before it) never did
        later = make_namespace("sel", labels={distribution.label: "yes"})
        await _until(lambda: _read(core, later), "ConfigMap in a namespace created later")
        assert _read(core, other) is None

        # an edit is reverted and a foreign key removed; other labels and annotations are kept
        def tamper(cm) -> None:
            cm.data = {ROOT_KEY: "tampered", "extra.pem": "foreign"}
            cm.metadata.labels = {"team": "mesh"}
            cm.metadata.annotations = {"note": "kept"}

        edit(lambda: _read(core, selected), tamper, lambda cm: core.replace_namespaced_config_map(NAME, selected, cm))
        await _until(lambda: _read(core, selected).data == {ROOT_KEY: distribution.roots.pem}, "edit reverted")
        restored = _read(core, selected)
        assert restored.metadata.labels == {"team": "mesh", "istio.io/config": "true"}
        assert restored.metadata.annotations == {"note": "kept"}

        # a delete is recreated
        core.delete_namespaced_config_map(NAME, selected)
        await _until(lambda: _read(core, selected), "deleted ConfigMap recreated")


async def test_a_namespace_leaving_the_selector_keeps_its_config_map_unchanged(
    kube_plane,
    pki,
    kube_api,
    make_namespace,
):
    async with distributing(kube_plane, pki) as distribution:
        core = client.CoreV1Api(kube_api)
        leaving = make_namespace("leave", labels={distribution.label: "yes"})
        staying = make_namespace("stay", labels={distribution.label: "yes"})
        await _until(lambda: _read(core, leaving) and _read(core, staying), "ConfigMaps written")
        old = distribution.roots.pem
        core.patch_namespace(leaving, {"metadata": {"labels": {distribution.label: "no"}}})
        # once the relabel has reached the controller (a later namespace event is handled after it) ...
        marker = make_namespace("mark", labels={distribution.label: "yes"})
        await _until(lambda: _read(core, marker), "ConfigMap in the marker namespace")
        distribution.roots.pem = _ca_pem(pki, "root-b")
        await _until(
            lambda: _read(core, staying).data[ROOT_KEY] == distribution.roots.pem, "rotation in a selected one"
        )
        # ... the namespace that left keeps what it had: not deleted, not updated
        assert _read(core, leaving).data == {ROOT_KEY: old}


async def test_a_namespace_refusing_the_write_is_retried_with_a_growing_backoff(
    kube_plane, pki, kube_api, make_namespace
):
    """A quota of zero ConfigMaps makes every create fail (403): the retries of that namespace wait 0.5 s, doubling,
    instead of writing twice a second for as long as the quota stays. The retry timer runs on a ManualClock; the
    writes go to the plane (time moves only once the failed write has armed its retry)."""
    label = f"meshsigner-trust-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube_api)
    namespace = make_namespace("quota")
    quota = core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="no-config-maps"),
            spec=client.V1ResourceQuotaSpec(hard={"configmaps": "0"}),
        ),
    )
    # no kube-controller-manager here to total the usage: the quota's status says it, as that controller would
    quota.status = client.V1ResourceQuotaStatus(hard={"configmaps": "0"}, used={"configmaps": "0"})
    core.replace_namespaced_resource_quota_status("no-config-maps", namespace, quota)
    clock, registry = ManualClock(), CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    distributor = TrustDistributor(
        seam, Roots(_ca_pem(pki, "root-a")), namespace_selector=f"{label}=yes", metrics=ControllerMetrics(registry),
        clock=clock,
    )  # fmt: skip

    def failures() -> float:
        labels = {"controller": "root-configmap", "result": "error"}
        return registry.get_sample_value("meshsigner_controller_reconciles_total", labels) or 0.0

    def retry_armed() -> bool:  # the roots poll and the namespace's pending retry wait on the clock
        return clock.sleeper_count == 2

    stop = asyncio.Event()
    task = asyncio.create_task(distributor.run(stop))
    try:
        await _until(lambda: distributor.synced, "both watches listed")
        core.patch_namespace(namespace, {"metadata": {"labels": {label: "yes"}}})  # one event: one first attempt
        await _until(lambda: failures() == 1 and retry_armed(), "the first write refused")
        failed_at = [clock.monotonic()]
        while clock.monotonic() < 8:
            await clock.advance(0.25)
            await _until(retry_armed, "the retry armed again")
            if failures() > len(failed_at):
                failed_at.append(clock.monotonic())
        assert failed_at == [0.0, 0.5, 1.5, 3.5, 7.5]
        assert _read(core, namespace) is None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        seam.close()


async def test_root_rotation_reaches_every_namespace(
    kube_plane,
    pki,
    kube_api,
    make_namespace,
):
    async with distributing(kube_plane, pki) as distribution:
        core = client.CoreV1Api(kube_api)
        namespaces = [make_namespace("rot", labels={distribution.label: "yes"}) for _ in range(5)]
        await _until(lambda: all(_read(core, ns) for ns in namespaces), "ConfigMaps written")
        old = distribution.roots.pem
        new = _ca_pem(pki, "root-new")
        for bundle in (old + new, new):  # old + new roots first, then new only
            distribution.roots.pem = bundle
            await _until(
                lambda bundle=bundle: all(_read(core, ns).data == {ROOT_KEY: bundle} for ns in namespaces),
                "rotation propagated",
            )


def _all_current(core: client.CoreV1Api, label: str, namespaces: set[str], pem: str) -> bool:
    listed = core.list_config_map_for_all_namespaces(field_selector=f"metadata.name={NAME}")
    current = {cm.metadata.namespace for cm in listed.items if cm.metadata and (cm.data or {}).get(ROOT_KEY) == pem}
    return namespaces <= current


async def test_rotation_reaches_500_namespaces(
    kube_plane,
    pki,
    kube_api,
):
    async with distributing(kube_plane, pki) as distribution:
        """The figure for docs/cluster-duties.md: 500 selected namespaces, default client rate limit (50 qps, burst
        100), 4 concurrent reconciles."""
        core = client.CoreV1Api(kube_api)
        prefix = f"many-{secrets.token_hex(3)}"
        names = {f"{prefix}-{i}" for i in range(500)}
        for name in sorted(names):
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={distribution.label: "yes"}))
            )
        try:
            first = await _until(
                lambda: _all_current(core, distribution.label, names, distribution.roots.pem), "500 ConfigMaps", 120
            )
            distribution.roots.pem = _ca_pem(pki, "root-rotated")
            rotated = await _until(
                lambda: _all_current(core, distribution.label, names, distribution.roots.pem), "500 rotated", 120
            )
            print(
                f"\n500 namespaces: created in {first:.1f}s after the namespaces; rotation propagated in {rotated:.1f}s"
            )
        finally:
            for name in names:
                with contextlib.suppress(client.ApiException):
                    core.delete_namespace(name)


async def test_cluster_trust_bundle_is_published_and_follows_the_roots(kube_plane, kube_api, pki):
    name = f"meshsigner-test-{secrets.token_hex(3)}"
    roots = Roots(_ca_pem(pki, "ctb-a"))
    registry = CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    publisher = ClusterTrustBundlePublisher(seam, name, roots, metrics=ControllerMetrics(registry), clock=SystemClock())
    custom = client.CustomObjectsApi(kube_api)

    def bundle() -> dict | None:
        try:
            return custom.get_cluster_custom_object("certificates.k8s.io", "v1beta1", "clustertrustbundles", name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await _until(lambda: bundle(), "ClusterTrustBundle created")
        assert bundle()["spec"]["trustBundle"] == roots.pem
        roots.pem = _ca_pem(pki, "ctb-b")
        await _until(lambda: bundle()["spec"]["trustBundle"] == roots.pem, "ClusterTrustBundle follows the roots")
        custom.delete_cluster_custom_object("certificates.k8s.io", "v1beta1", "clustertrustbundles", name)
        await _until(lambda: bundle(), "ClusterTrustBundle recreated")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        seam.close()
        with contextlib.suppress(client.ApiException):
            custom.delete_cluster_custom_object("certificates.k8s.io", "v1beta1", "clustertrustbundles", name)


async def test_replacing_the_pinned_root_file_reaches_every_namespace(
    kube_plane, kube_api, make_namespace, pki, tmp_path
):
    """As serve wires it with --root-ca-file: the RootBundle watches the file; the ConfigMaps follow it through a
    rotation (old + new roots, then new only); a bad file changes nothing."""
    path = tmp_path / "roots.pem"
    old, new = _ca_pem(pki, "pinned-old"), _ca_pem(pki, "pinned-new")
    path.write_text(old)
    bundle = RootBundle(path)
    label = f"meshsigner-pinned-{secrets.token_hex(3)}"
    registry = CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    distributor = TrustDistributor(
        seam,
        lambda: bundle.pem,
        namespace_selector=f"{label}=yes",
        workers=2,
        metrics=ControllerMetrics(registry),
        clock=SystemClock(),
    )
    core = client.CoreV1Api(kube_api)
    namespaces = [make_namespace("pin", labels={label: "yes"}) for _ in range(3)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(distributor.run(stop)), asyncio.create_task(bundle.watch(stop, interval=0.2))]
    try:
        for pem in (old, old + new, new):
            path.write_text(pem)
            await _until(
                lambda pem=pem: all(
                    (_read(core, ns) or client.V1ConfigMap()).data == {ROOT_KEY: pem} for ns in namespaces
                ),
                "ConfigMaps follow the pinned file",
            )
        path.write_text("not a certificate")  # refused by the RootBundle: the ConfigMaps keep the last good roots
        marker = make_namespace("pin", labels={label: "yes"})
        await _until(lambda: _read(core, marker), "ConfigMap in a namespace created after the bad file")
        assert _read(core, marker).data == {ROOT_KEY: new}
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        seam.close()
