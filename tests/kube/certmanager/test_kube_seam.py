"""The Kubernetes seam (bridge/kube/) against the real API server: what runs where, and how errors are classed."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator

import pytest
import urllib3
from prometheus_client import CollectorRegistry

from bridge.kube import (
    CONFIG_MAPS,
    NAMESPACES,
    PODS,
    KubeClient,
    KubeConflict,
    KubeForbidden,
    KubeMetrics,
    KubeNotFound,
    KubeOptions,
    ListWatch,
    Obj,
    Resource,
)
from tests.kube.certmanager.conftest import kubeconfig_for_token


@pytest.fixture
def kube(kube_plane) -> Iterator[KubeClient]:
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(CollectorRegistry()))
    yield seam
    seam.close()


async def test_core_lists_read_the_body_off_the_event_loop(kube, make_namespace, monkeypatch):
    """A core-group LIST streams its body without the client's models; reading that body is a blocking socket
    read, so it must happen in the pool thread, never on the loop's thread."""
    namespace = make_namespace("seam")
    readers: list[int] = []
    original = urllib3.HTTPResponse.read

    def read(self, *args, **kwargs):
        readers.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(urllib3.HTTPResponse, "read", read)
    loop_thread = threading.get_ident()
    namespaces, version = await kube.list(NAMESPACES, None)
    assert namespace in {n["metadata"]["name"] for n in namespaces}
    assert version
    await kube.list(PODS, None)
    await kube.list(CONFIG_MAPS, namespace)
    assert readers, "no response body was read through urllib3"
    assert loop_thread not in readers, "a LIST body was read on the event loop's thread"


class BuggyHandler:
    """Raises in its first on_relist (a bug in a cache's handler) and in every on_event for one name."""

    def __init__(self) -> None:
        self.relists = 0
        self.names: set[str] = set()
        self.relisted = asyncio.Event()

    def on_relist(self, objects: list[Obj]) -> None:
        self.relists += 1
        if self.relists == 1:
            raise RuntimeError("bug in on_relist")
        self.names = {o["metadata"]["name"] for o in objects}
        self.relisted.set()

    def on_event(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if name.startswith("boom-"):
            raise RuntimeError("bug in on_event")
        if kind == "ADDED":
            self.names.add(name)


async def test_a_handler_bug_ends_the_watch_and_a_restart_relists(kube, make_namespace):
    """A bug in a handler is not an API outage: ListWatch.run ends with the bug itself (the supervisor logs its
    traceback and restarts the task) and the watch is not synced meanwhile, so nothing is decided on a cache that
    may have missed events. Before, the watch swallowed it and retried as if the API were down. A restarted run
    relists and goes on."""
    labels = {"meshsigner-seam": secrets.token_hex(4)}
    first = make_namespace("seam", labels=labels)
    handler = BuggyHandler()
    watch = ListWatch(kube, NAMESPACES, None, handler, label_selector="meshsigner-seam=" + labels["meshsigner-seam"])
    with pytest.raises(RuntimeError, match="bug in on_relist"):
        await asyncio.wait_for(watch.run(asyncio.Event()), 15)
    assert not watch.synced
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))  # the supervisor's restart
    try:
        await asyncio.wait_for(handler.relisted.wait(), 15)
        assert watch.synced and handler.relists == 2 and handler.names == {first}
        make_namespace("boom", labels=labels)  # its event makes the handler raise
        with pytest.raises(RuntimeError, match="bug in on_event"):
            await asyncio.wait_for(task, 15)
        assert not watch.synced
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 10)


async def test_get_reads_the_core_resource_asked_for(kube, kube_api, make_namespace):
    """get() of a core resource read a ConfigMap whatever the resource; it now reads what it is asked for, and
    refuses (before any API call) a core resource the seam does not serve."""
    from kubernetes import client

    namespace = make_namespace("seam")
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="same"), data={"k": "v"})
    )
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="same"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
        ),
    )
    config_map = await kube.get(CONFIG_MAPS, namespace, "same")
    assert (config_map["kind"], config_map["data"]) == ("ConfigMap", {"k": "v"})
    pod = await kube.get(PODS, namespace, "same")
    assert pod["kind"] == "Pod" and pod["spec"]["containers"][0]["name"] == "c"
    found = await kube.get(NAMESPACES, None, namespace)
    assert (found["kind"], found["metadata"]["name"]) == ("Namespace", namespace)
    with pytest.raises(KubeNotFound):
        await kube.get(PODS, namespace, "absent")
    with pytest.raises(ValueError, match="does not serve core services"):
        await kube.get(Resource("", "v1", "services"), namespace, "same")
    with pytest.raises(ValueError, match="does not serve core services"):
        await kube.list(Resource("", "v1", "services"), namespace)


async def test_delete_sends_the_uid_precondition_and_an_object_already_gone_is_not_an_error(kube, make_namespace):
    """A delete by name and uid removes only that object: a different uid is a conflict that leaves it in place;
    deleting what is already gone is not an error."""
    namespace = make_namespace("seam")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}, "data": {"k": "v"}}
    created = await kube.create(CONFIG_MAPS, namespace, body)
    with pytest.raises(KubeConflict):
        await kube.delete(CONFIG_MAPS, namespace, "kept", uid="not-its-uid")
    assert (await kube.get(CONFIG_MAPS, namespace, "kept"))["data"] == {"k": "v"}
    await kube.delete(CONFIG_MAPS, namespace, "kept", uid=created["metadata"]["uid"])
    with pytest.raises(KubeNotFound):
        await kube.get(CONFIG_MAPS, namespace, "kept")
    await kube.delete(CONFIG_MAPS, namespace, "kept", uid=created["metadata"]["uid"])  # already gone: no error


async def test_a_watch_the_server_refuses_raises_its_status_when_opened(
    kube_plane, make_namespace, make_service_account, mint_token, tmp_path
):
    """A watch refused at open (here 403: a service account without RBAC) is that error at once, so the ListWatch
    backs off or relists, instead of a stream whose only line is an error."""
    namespace = make_namespace("seam")
    token = mint_token(namespace, make_service_account(namespace), audience=None)
    kubeconfig = kubeconfig_for_token(kube_plane, token, tmp_path / "kubeconfig")
    registry = CollectorRegistry()
    seam = KubeClient(KubeOptions(kubeconfig=str(kubeconfig)), KubeMetrics(registry))
    try:
        with pytest.raises(KubeForbidden):
            await asyncio.to_thread(seam.open_watch, PODS, namespace, "0", label_selector="app=web")
        labels = {"verb": "watch", "resource": "pods", "code": "403"}
        assert registry.get_sample_value("meshsigner_kube_api_requests_total", labels) == 1
    finally:
        seam.close()
