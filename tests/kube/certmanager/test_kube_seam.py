"""The Kubernetes seam (bridge/kube.py) against the real API server: what runs where, and how errors are classed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import urllib3
from prometheus_client import CollectorRegistry

from bridge.kube import CONFIG_MAPS, NAMESPACES, PODS, KubeClient, KubeMetrics, KubeOptions


@pytest.fixture
def kube(kube_plane) -> Iterator[KubeClient]:  # type: ignore[no-untyped-def]
    seam = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(CollectorRegistry()))
    yield seam
    seam.close()


async def test_core_lists_read_the_body_off_the_event_loop(kube, make_namespace, monkeypatch):  # type: ignore[no-untyped-def]
    """A core-group LIST streams its body without the client's models; reading that body is a blocking socket
    read, so it must happen in the pool thread, never on the loop's thread."""
    namespace = make_namespace("seam")
    readers: list[int] = []
    original = urllib3.HTTPResponse.read

    def read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
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
