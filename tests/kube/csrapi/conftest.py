"""Fixtures for the Kubernetes CSR API mode and the audit mirror on the real plane.

``csr_signer(issuer, *flags, approve=True, wait=True)`` starts ``meshsigner serve --signer kubernetes-csr`` against
``issuer.signer_name`` with the issuer's CA pinned as ``--root-ca-file``; ``.stub()`` speaks TLS to it (the serving
certificate itself comes through the CSR API). ``csr_decider(signer_name, decide)`` approves or denies every
meshsigner CSR of a signer name as another approver would, until the test ends. ``our_csrs(signer_name)`` lists
meshsigner's CSRs of that signer name. ``running_csr_backend(kube, signer_name, roots_file)`` is the backend
in-process with its watch running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry

from bridge.certificate_request_watch import RequestWatch
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.kubernetes_csr import KubernetesCsrBackend, KubernetesCsrOptions, csr_watch
from bridge.metrics import BridgeMetrics
from bridge.root_bundle import RootBundle
from tests.kube.certmanager.conftest import ClusterSigner
from tests.support.background import polling_threads, running_loops
from tests.support.processes import start_server

LABEL = "app.kubernetes.io/managed-by=meshsigner"


def list_csrs(kube_api, signer_name: str, label_selector: str = LABEL) -> list[Any]:
    found = client.CertificatesV1Api(kube_api).list_certificate_signing_request(
        label_selector=label_selector, field_selector=f"spec.signerName={signer_name}"
    )
    return list(found.items)


@pytest.fixture
def our_csrs(kube_api) -> Callable[..., list[Any]]:
    return lambda signer_name, label_selector=LABEL: list_csrs(kube_api, signer_name, label_selector)


@pytest.fixture
def csr_signer(kube_plane, tmp_path: Path) -> Iterator[Callable[..., ClusterSigner]]:
    started: list[ClusterSigner] = []

    def start(issuer, *flags: str, wait: bool = True) -> ClusterSigner:
        root_file = issuer.roots_file(tmp_path, f"roots-{len(started)}.pem")
        argv = [
            "--signer=kubernetes-csr",
            f"--signer-name={issuer.signer_name}",
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--root-ca-file={root_file}",
            "--serving-signature-algorithm=ECDSA",
            "--serving-certificate-key-size=256",
            "--log-format=json",
            *flags,
        ]
        server = start_server(argv, tmp_path / f"serve-{len(started)}.log", wait=wait)
        signer = ClusterSigner(server, "", issuer.ca_cert_pem)
        started.append(signer)
        return signer

    yield start
    for signer in started:
        signer.close()


@pytest.fixture
def csr_decider(kube_api) -> Iterator[Callable[..., None]]:
    """Another approver: ``decide(csr)`` returns "approve", "deny" or None for each undecided meshsigner CSR."""
    certs = client.CertificatesV1Api(kube_api)

    def run(signer_name: str, decide: Callable[[Any], str | None], stop: threading.Event) -> None:
        while not stop.wait(0.1):
            try:
                items = list_csrs(kube_api, signer_name)
            except Exception:  # the API may be restarting
                continue
            for csr in items:
                conditions = (csr.status.conditions if csr.status else None) or []
                if any(c.type in ("Approved", "Denied") for c in conditions):
                    continue
                decision = decide(csr)
                if decision is None:
                    continue
                csr.status = csr.status or client.V1CertificateSigningRequestStatus()
                csr.status.conditions = [
                    *conditions,
                    client.V1CertificateSigningRequestCondition(
                        type="Approved" if decision == "approve" else "Denied",
                        status="True",
                        reason="OtherApprover",
                        message=f"{decision} by another approver",
                        last_update_time=dt.datetime.now(dt.UTC),
                    ),
                ]
                with contextlib.suppress(ApiException):
                    certs.replace_certificate_signing_request_approval(csr.metadata.name, csr)

    with polling_threads() as start_thread:
        yield lambda signer_name, decide: start_thread(functools.partial(run, signer_name, decide))


def plane_client(kube_plane, qps: float = 500.0) -> KubeClient:
    return KubeClient(
        KubeOptions(kubeconfig=kube_plane.kubeconfig, qps=qps, burst=int(qps)), KubeMetrics(CollectorRegistry())
    )


@contextlib.asynccontextmanager
async def running_csr_backend(
    kube: Any,
    signer_name: str,
    roots_file: Path,
    *,
    timeout_seconds: float = 30.0,
    watch: RequestWatch | None = None,
    approve: bool = True,
    preserve: bool = False,
) -> AsyncIterator[KubernetesCsrBackend]:
    """The backend wired as ``serve`` wires it (its watch running); on exit its deletes are drained."""
    watch = watch or csr_watch(kube, signer_name)
    backend = KubernetesCsrBackend(
        kube,
        KubernetesCsrOptions(
            signer_name=signer_name, timeout_seconds=timeout_seconds, approve=approve, preserve=preserve
        ),
        watch=watch,
        roots=RootBundle(roots_file),
        metrics=BridgeMetrics(CollectorRegistry()),
    )
    async with running_loops([watch.run], ready=lambda: watch.ready):
        try:
            yield backend
        finally:
            await backend.close()


# the cert-manager mode's fixtures, for the audit mirror's tests (which run meshsigner with --signer cert-manager)
from tests.kube.certmanager.conftest import approver, signer_factory  # noqa: E402, F401
