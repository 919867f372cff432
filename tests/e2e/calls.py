"""Sending CreateCertificate the way Istio's agents do, with knobs for every malformed variant."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from proto import istio_ca_pb2, istio_ca_pb2_grpc


def create(
    stub: istio_ca_pb2_grpc.IstioCertificateServiceStub,
    csr: str,
    token: str | None,
    *,
    validity: int = 86400,
    cluster_id: str | None = "Kubernetes",
    metadata_fields: dict | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[grpc.StatusCode, list[str], str]:
    """Returns (code, cert_chain, details); cert_chain is empty on refusals."""
    meta: list[tuple[str, str]] = []
    if token is not None:
        meta.append(("authorization", f"Bearer {token}"))
    if cluster_id is not None:
        meta.append(("clusterid", cluster_id))
    meta += headers or []
    struct = struct_pb2.Struct()
    struct.update(metadata_fields if metadata_fields is not None else {"CertSigner": ""})
    request = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=validity, metadata=struct)
    try:
        response = stub.CreateCertificate(request, metadata=meta, timeout=20)
    except grpc.RpcError as error:
        return error.code(), [], error.details() or ""
    return grpc.StatusCode.OK, list(response.cert_chain), ""
