"""The resources the seam serves: cert-manager's custom resources and the core ones (group "")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]  # one Kubernetes object as parsed JSON

CM_GROUP, CM_VERSION = "cert-manager.io", "v1"
CSR_GROUP = "certificates.k8s.io"


@dataclass(frozen=True)
class Resource:
    """A namespaced or cluster-scoped custom resource, or one of the core resources the seam serves (group "":
    configmaps, namespaces, pods)."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def is_core(self) -> bool:
        return self.group == ""


CERTIFICATE_REQUESTS = Resource(CM_GROUP, CM_VERSION, "certificaterequests")
CONFIG_MAPS = Resource("", "v1", "configmaps")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
PODS = Resource("", "v1", "pods")  # namespace None: every namespace
# certificates.k8s.io/v1 CertificateSigningRequests: cluster-scoped, served through the custom-object calls (same
# URL shape); the approval subresource has its own call (KubeClient.update_approval)
CERTIFICATE_SIGNING_REQUESTS = Resource(CSR_GROUP, "v1", "certificatesigningrequests", namespaced=False)


def issuer_resource(kind: str, group: str) -> Resource:
    """Issuer/ClusterIssuer of cert-manager, or an external issuer following the same naming (plural = kind + s;
    cluster-scoped when the kind ends in ``ClusterIssuer``, as AWSPCAClusterIssuer or GoogleCASClusterIssuer do)."""
    plural = kind.lower() + "s"
    version = CM_VERSION if group == CM_GROUP else "v1"
    return Resource(group, version, plural, namespaced=not kind.endswith("ClusterIssuer"))
