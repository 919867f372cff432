"""The CertificateSigningRequest a workload request creates, on the real plane: it names the decision from the
SigningRequest alone (no per-request context is set up here), and the backend's answer names that object."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from kubernetes import client

from bridge.kube import KubeClient
from tests.kube.csrapi.conftest import plane_client, running_csr_backend
from tests.support.signing_request import signing_request


@pytest.fixture
def kube(kube_plane) -> Iterator[KubeClient]:
    seam = plane_client(kube_plane)
    yield seam
    seam.close()


async def test_the_created_object_names_the_decision_and_the_answer_names_the_object(
    kube, kube_api, ca_cluster_issuer, tmp_path
):
    certificates = client.CertificatesV1Api(kube_api)
    async with running_csr_backend(
        kube, ca_cluster_issuer.signer_name, ca_cluster_issuer.roots_file(tmp_path), preserve=True
    ) as backend:
        signed = await backend.sign(signing_request("spiffe://cluster.local/ns/named/sa/web", decision_id="d-4242"))
    assert signed.object_name.startswith("meshsigner-")
    try:
        created = await asyncio.to_thread(certificates.read_certificate_signing_request, signed.object_name)
        assert created.metadata.annotations["meshsigner.io/decision-id"] == "d-4242"
        [approved] = [c for c in created.status.conditions if c.type == "Approved"]
        assert "decision d-4242" in approved.message
    finally:
        await asyncio.to_thread(certificates.delete_certificate_signing_request, signed.object_name)
