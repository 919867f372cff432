"""The CSR backend in-process on the real plane, for what a serve process cannot show: a burst whose shared watch
is cut mid-way loses no request (the watch resumes and every waiter is still resolved by UID), leaves no CSR
behind, and the leftovers of a crashed replica are swept (only this signer name's, only meshsigner's)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from cryptography import x509
from kubernetes import client
from prometheus_client import CollectorRegistry

from bridge.cleanup import LeftoverSweeper
from bridge.errors import BackendUnavailable
from bridge.kube import CERTIFICATE_SIGNING_REQUESTS, KubeClient, KubeMetrics, Obj, Resource
from bridge.kubernetes_csr import REQUEST_SELECTOR, csr_watch, signer_field_selector
from clocks import Clock
from tests.kube.csrapi.conftest import plane_client, running_csr_backend
from tests.support.csr_builder import make_csr
from tests.support.signing_request import signing_request


@pytest.fixture
def kube(kube_plane) -> Iterator[KubeClient]:
    seam = plane_client(kube_plane)
    yield seam
    seam.close()


class CuttableWatchSource:
    """The API behind the shared watch, whose open streams the test can cut (as a dropped connection would)."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self.metrics: KubeMetrics = kube.metrics
        self.clock: Clock = kube.clock
        self.opened: list[urllib3.HTTPResponse] = []
        self.cuts = 0
        self._lock = threading.Lock()

    async def list(self, resource: Resource, namespace: str | None, **selectors: str) -> tuple[list[Obj], str]:
        return await self._kube.list(resource, namespace, **selectors)

    def open_watch(self, resource: Resource, namespace: str | None, resource_version: str, **selectors: str) -> Any:
        response = self._kube.open_watch(resource, namespace, resource_version, **selectors)
        with self._lock:
            self.opened.append(response)
        return response

    def cut(self) -> None:
        with self._lock:
            streams, self.opened = self.opened, []
        for response in streams:
            response.shutdown()
        self.cuts += len(streams)


async def test_burst_with_the_watch_cut_midway_loses_nothing_and_leaves_nothing(
    kube, ca_cluster_issuer, tmp_path, our_csrs
):
    source = CuttableWatchSource(kube)
    watch = csr_watch(source, ca_cluster_issuer.signer_name)
    total = 60
    root = x509.load_pem_x509_certificate(ca_cluster_issuer.ca_cert_pem)
    async with running_csr_backend(
        kube, ca_cluster_issuer.signer_name, ca_cluster_issuer.roots_file(tmp_path), watch=watch
    ) as backend:
        done = 0
        halfway = asyncio.Event()

        async def one(index: int):
            nonlocal done
            signed = await backend.sign(signing_request(f"spiffe://cluster.local/ns/burst/sa/sa-{index % 10}"))
            done += 1
            if done == total // 3:
                halfway.set()
            return signed

        requests = [asyncio.create_task(one(index)) for index in range(total)]
        async with asyncio.timeout(60):
            await halfway.wait()
        source.cut()  # the watch breaks with two thirds of the burst still in flight
        async with asyncio.timeout(90):
            results = await asyncio.gather(*requests)
    assert source.cuts >= 1
    assert len(results) == total
    for signed in results:
        signed.leaf.verify_directly_issued_by(root)
    assert await asyncio.to_thread(our_csrs, ca_cluster_issuer.signer_name) == []


async def test_unapproved_request_times_out_unavailable_and_is_deleted(kube, ca_cluster_issuer, tmp_path, our_csrs):
    async with running_csr_backend(
        kube, ca_cluster_issuer.signer_name, ca_cluster_issuer.roots_file(tmp_path), timeout_seconds=2.0, approve=False
    ) as backend:
        with pytest.raises(BackendUnavailable) as unavailable:
            await backend.sign(signing_request("spiffe://cluster.local/ns/slow/sa/web"))
        assert unavailable.value.reason == "CERTIFICATE_SIGNING_REQUEST_TIMEOUT"
    assert await asyncio.to_thread(our_csrs, ca_cluster_issuer.signer_name) == []


async def test_cancelled_request_is_deleted(kube, ca_cluster_issuer, tmp_path, our_csrs):
    async with running_csr_backend(
        kube, ca_cluster_issuer.signer_name, ca_cluster_issuer.roots_file(tmp_path), approve=False
    ) as backend:
        signing = asyncio.create_task(backend.sign(signing_request("spiffe://cluster.local/ns/gone/sa/web")))
        async with asyncio.timeout(30):  # wait until its CSR exists (nobody approves it)
            while not await asyncio.to_thread(our_csrs, ca_cluster_issuer.signer_name):
                await asyncio.sleep(0.1)
        signing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await signing
    assert await asyncio.to_thread(our_csrs, ca_cluster_issuer.signer_name) == []


def _leftover(kube_api, signer_name: str, labels: dict[str, str]) -> str:
    body = client.V1CertificateSigningRequest(
        metadata=client.V1ObjectMeta(generate_name="meshsigner-", labels=labels),
        spec=client.V1CertificateSigningRequestSpec(
            request=base64.b64encode(make_csr(["spiffe://cluster.local/ns/a/sa/b"]).encode()).decode(),
            signer_name=signer_name,
            usages=["digital signature", "client auth"],
        ),
    )
    created = client.CertificatesV1Api(kube_api).create_certificate_signing_request(body)
    assert created.metadata is not None and created.metadata.name
    return str(created.metadata.name)


async def test_sweep_removes_a_crashed_replicas_leftovers_only(kube, kube_api, our_csrs):
    signer_name = f"example.com/sweep-{secrets.token_hex(3)}"
    ours = {"app.kubernetes.io/managed-by": "meshsigner", "meshsigner.io/purpose": "workload"}
    crashed = await asyncio.to_thread(_leftover, kube_api, signer_name, ours)
    audit = await asyncio.to_thread(_leftover, kube_api, signer_name, {**ours, "meshsigner.io/purpose": "audit"})
    other = await asyncio.to_thread(_leftover, kube_api, f"{signer_name}-other", ours)
    sweeper = LeftoverSweeper(
        kube,
        None,
        request_timeout_seconds=0.5,  # anything older than 1 s cannot be in flight
        registry=CollectorRegistry(),
        resource=CERTIFICATE_SIGNING_REQUESTS,
        label_selector=REQUEST_SELECTOR,
        field_selector=signer_field_selector(signer_name),
        what="CertificateSigningRequests",
        metric="meshsigner_certificate_signing_requests_swept_total",
    )
    try:
        async with asyncio.timeout(30):
            while await sweeper.sweep() == 0:  # not old enough yet
                await asyncio.sleep(0.25)
        names = {csr.metadata.name for csr in await asyncio.to_thread(our_csrs, signer_name)}
        assert crashed not in names
        assert audit in names  # the audit mirror's objects have their own retention
        other_names = {csr.metadata.name for csr in await asyncio.to_thread(our_csrs, f"{signer_name}-other")}
        assert other in other_names  # another signer name's objects are not ours
    finally:
        certs = client.CertificatesV1Api(kube_api)
        for name in (crashed, audit, other):
            with contextlib.suppress(client.ApiException):
                await asyncio.to_thread(certs.delete_certificate_signing_request, name)
