"""Fixtures for in-cluster mode on the real plane: ``meshsigner serve --signer cert-manager --authenticator
tokenreview`` as a process, a test-side approver (the plane runs cert-manager without its auto-approver), and the
seam pointed at the plane for in-process tests.

``signer_factory(namespace, issuer, *flags, root_file=..., approve=True)`` starts a serve process whose
CertificateRequests go to ``namespace``; ``.stub()`` speaks TLS to it trusting the issuer's CA (the serving
certificate itself comes from the issuer). ``approver(namespace, deny=predicate)`` approves (or denies) every
meshsigner CertificateRequest appearing in ``namespace`` until the test ends. ``running_backend(kube, namespace,
issuer, roots_file)`` is the cert-manager backend in-process (its watch and issuer check running), for tests that
need to reach inside a request.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry

from bridge.cert_manager import CertManagerBackend, CertManagerOptions
from bridge.certificate_request_watch import CertificateRequestWatch
from bridge.issuer_check import IssuerCheck
from bridge.kube import KubeClient
from bridge.metrics import BridgeMetrics
from bridge.root_bundle import RootBundle
from bridge.runtime_issuer import IssuerRef, IssuerSelector
from proto import istio_ca_pb2_grpc
from tests.support.background import polling_threads, running_loops
from tests.support.processes import ServerProcess, start_server

SERVER_NAME = "cert-manager-istio-csr.cert-manager.svc"
CM = ("cert-manager.io", "v1")
LABEL = "app.kubernetes.io/managed-by=meshsigner"


@dataclass
class ClusterSigner:
    server: ServerProcess
    namespace: str
    roots_pem: bytes
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        channel = grpc.secure_channel(
            self.server.address,
            grpc.ssl_channel_credentials(root_certificates=self.roots_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME)],
        )
        self.channels.append(channel)
        return channel

    def stub(self) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
        return istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel())

    def close(self) -> int:
        for channel in self.channels:
            channel.close()
        return self.server.stop()


def list_requests(kube_api, namespace: str) -> list[dict]:
    co = client.CustomObjectsApi(kube_api)
    found: Any = co.list_namespaced_custom_object(*CM, namespace, "certificaterequests", label_selector=LABEL)
    return list(found["items"])


@pytest.fixture
def signer_factory(kube_plane, tmp_path: Path) -> Iterator[Callable[..., ClusterSigner]]:
    started: list[ClusterSigner] = []

    def start(
        namespace: str,
        issuer,
        *flags: str,
        root_file: Path | str | None = "issuer",
        approve: bool = True,
        wait: bool = True,
        roots_pem: bytes | None = None,
    ) -> ClusterSigner:
        if root_file == "issuer":
            root_file = issuer.roots_file(tmp_path, f"roots-{len(started)}.pem")
        argv = [
            "--signer=cert-manager",
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--certificate-namespace={namespace}",
            f"--issuer-name={issuer.name}",
            f"--issuer-kind={issuer.kind}",
            f"--issuer-group={issuer.group}",
            "--serving-signature-algorithm=ECDSA",
            "--serving-certificate-key-size=256",
            "--log-format=json",
            *([f"--root-ca-file={root_file}"] if root_file else []),
            *(["--approve-certificate-requests"] if approve else []),
            *flags,
        ]
        server = start_server(argv, tmp_path / f"serve-{len(started)}.log", wait=wait)
        signer = ClusterSigner(server, namespace, roots_pem or issuer.ca_cert_pem)
        started.append(signer)
        return signer

    yield start
    for signer in started:
        signer.close()


@pytest.fixture
def approver(kube_api) -> Iterator[Callable[..., None]]:
    """Decides meshsigner's CertificateRequests in a namespace, as approver-policy (or an external issuer) would:
    ``decide(cr)`` returns "approve", "deny", "fail" (Ready=False reason Failed, as an issuer reports a failure)
    or None (leave it alone)."""
    co = client.CustomObjectsApi(kube_api)

    def run(namespace: str, decide: Callable[[dict], str | None], stop: threading.Event) -> None:
        decided: set[str] = set()
        while not stop.wait(0.1):
            try:
                found: Any = co.list_namespaced_custom_object(
                    *CM, namespace, "certificaterequests", label_selector=LABEL, _request_timeout=5
                )
                items = found["items"]
            except Exception:  # the API may be restarting in a fault test
                continue
            for cr in items:
                uid = cr["metadata"]["uid"]
                conditions = (cr.get("status") or {}).get("conditions") or []
                if uid in decided or any(c["type"] in ("Approved", "Denied") for c in conditions):
                    continue
                decision = decide(cr)
                if decision is None:
                    continue
                now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                kind, status, reason = {
                    "approve": ("Approved", "True", "TestApprover"),
                    "deny": ("Denied", "True", "TestApprover"),
                    "fail": ("Ready", "False", "Failed"),
                }[decision]
                condition = {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": f"{decision} by the test",
                    "lastTransitionTime": now,
                }
                cr.setdefault("status", {})["conditions"] = [*conditions, condition]
                with contextlib.suppress(ApiException):
                    co.replace_namespaced_custom_object_status(
                        *CM, namespace, "certificaterequests", cr["metadata"]["name"], cr
                    )
                    decided.add(uid)

    def start(namespace: str, decide: Callable[[dict], str | None] = lambda cr: "approve") -> None:
        start_thread(functools.partial(run, namespace, decide))

    with polling_threads() as start_thread:
        yield start


def purpose(cr: dict) -> str:
    return cr["metadata"]["labels"].get("meshsigner.io/purpose", "")


def decode_chain(chain: list[str]):
    from cryptography import x509

    return [x509.load_pem_x509_certificates(element.encode()) for element in chain]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextlib.asynccontextmanager
async def running_backend(
    kube: KubeClient,
    namespace: str,
    issuer,
    roots_file: Path | None,
    *,
    approve: bool = False,
    timeout_seconds: float = 30.0,
) -> AsyncIterator[CertManagerBackend]:
    """The cert-manager backend wired as ``serve`` wires it, with its watch and issuer check running; on exit its
    pending deletes are drained (``close``) and the tasks stopped."""
    registry = CollectorRegistry()
    issuers = IssuerSelector(IssuerRef(issuer.name, issuer.kind, issuer.group))
    check = IssuerCheck(kube, issuers, namespace, registry)
    watch = CertificateRequestWatch(kube, namespace)
    backend = CertManagerBackend(
        kube,
        CertManagerOptions(namespace=namespace, approve=approve, timeout_seconds=timeout_seconds),
        issuers=issuers,
        issuer_check=check,
        watch=watch,
        roots=RootBundle(roots_file),
        metrics=BridgeMetrics(registry),
    )
    backend.registry = registry  # type: ignore[attr-defined]
    async with running_loops([watch.run, check.run], ready=lambda: watch.ready and check.ready):
        try:
            yield backend
        finally:
            await backend.close()


def kubeconfig_for_token(kube_plane, token: str, path: Path) -> Path:
    """A kubeconfig for the plane that authenticates with ``token`` (a service account's, for RBAC tests)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "p", "cluster": {"server": kube_plane.api_server_url,
                                                "certificate-authority": kube_plane.ca_cert_path}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "p", "user": "u"}}],
    }))  # fmt: skip
    return path
