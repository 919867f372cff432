"""KubeClient's error seam without a cluster: an API server that cannot be reached is KubeUnavailable (retry may
help); a bug in what we hand the client (a body that cannot be serialised) stays the bug it is."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bridge.kube import (
    CERTIFICATE_REQUESTS,
    NAMESPACES,
    KubeClient,
    KubeError,
    KubeMetrics,
    KubeOptions,
    KubeUnavailable,
)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeClient]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{_closed_port()}"}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    client = KubeClient(
        KubeOptions(kubeconfig=str(kubeconfig), rate_limiter=False, threads=2), KubeMetrics(CollectorRegistry())
    )
    yield client
    client.close()


async def test_an_unreachable_api_server_is_unavailable(kube: KubeClient) -> None:
    with pytest.raises(KubeUnavailable):
        await kube.list(NAMESPACES, None)


async def test_a_programming_error_propagates_as_itself(kube: KubeClient) -> None:
    """Before: the client's AttributeError on a body it cannot serialise became KubeUnavailable, so a bug was
    retried forever as an outage."""
    with pytest.raises(AttributeError) as caught:
        await kube.create(CERTIFICATE_REQUESTS, "istio-system", {"spec": {"request": object()}})
    assert not isinstance(caught.value, KubeError)
