"""KubeClient's error seam without a cluster: an API server that cannot be reached is KubeUnavailable (retry may
help); a bug in what we hand the client (a body that cannot be serialised) stays the bug it is."""

from __future__ import annotations

import http.server
import socket
import threading
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


def _client_of(tmp_path: Path, port: int) -> KubeClient:
    """A KubeClient for an API server on ``port`` of loopback, plain HTTP, a token it never checks."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    return KubeClient(
        KubeOptions(kubeconfig=str(kubeconfig), rate_limiter=False, threads=2), KubeMetrics(CollectorRegistry())
    )


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeClient]:
    client = _client_of(tmp_path, _closed_port())
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


class _Answers(http.server.BaseHTTPRequestHandler):
    """A broken API server (or a proxy in front of one) for what the real one never answers: each path answers one
    fixed status and body; the request line and body are recorded. Everything the real API server can answer is
    tested against it (tests/kube/certmanager/test_kube_seam.py)."""

    answers: dict[str, tuple[int, bytes]] = {}
    seen: list[str] = []

    def _answer(self) -> None:
        sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(f"{self.command} {self.path} {sent.decode()}".rstrip())
        status, body = self.answers.get(self.path.split("?")[0], (404, b'{"kind": "Status", "code": 404}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def answering(tmp_path: Path) -> Iterator[tuple[KubeClient, type[_Answers]]]:
    answers = type("Answers", (_Answers,), {"answers": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kube = _client_of(tmp_path, server.server_address[1])
    yield kube, answers
    kube.close()
    server.shutdown()
    server.server_close()


async def test_an_answer_that_is_not_a_json_object_is_unavailable(answering: tuple[KubeClient, type[_Answers]]) -> None:
    kube, answers = answering
    answers.answers["/apis/cert-manager.io/v1/namespaces/ns/certificaterequests/cr"] = (200, b"[1, 2]")
    with pytest.raises(KubeUnavailable, match="not an object"):
        await kube.get(CERTIFICATE_REQUESTS, "ns", "cr")
