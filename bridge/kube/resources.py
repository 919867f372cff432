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
    configmaps, namespaces, pods, secrets, serviceaccounts)."""

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
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")  # namespace None: every namespace
SECRETS = Resource("", "v1", "secrets")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
CERTIFICATES = Resource(CM_GROUP, CM_VERSION, "certificates")
CTB_GROUP = "certificates.k8s.io"
CTB_VERSIONS = ("v1", "v1beta1", "v1alpha1")  # ClusterTrustBundle: newest first (the API server may serve one)


def cluster_trust_bundles(version: str) -> Resource:
    return Resource(CTB_GROUP, version, "clustertrustbundles", namespaced=False)


def object_path(resource: Resource, namespace: str | None, name: str = "") -> str:
    """The REST path of a resource's collection (no ``name``) or of one object."""
    r = resource
    base = f"/api/{r.version}" if r.is_core else f"/apis/{r.group}/{r.version}"
    if r.namespaced:
        if not namespace:
            raise ValueError(f"{r.plural} is namespaced: a namespace is required")
        base += f"/namespaces/{namespace}"
    path = f"{base}/{r.plural}"
    return f"{path}/{name}" if name else path


# certificates.k8s.io/v1 CertificateSigningRequests: cluster-scoped, served through the custom-object calls (same
# URL shape); the approval subresource has its own call (KubeClient.update_approval)
CERTIFICATE_SIGNING_REQUESTS = Resource(CSR_GROUP, "v1", "certificatesigningrequests", namespaced=False)


def issuer_resource(kind: str, group: str) -> Resource:
    """Issuer/ClusterIssuer of cert-manager, or an external issuer following the same naming (plural = kind + s;
    cluster-scoped when the kind ends in ``ClusterIssuer``, as AWSPCAClusterIssuer or GoogleCASClusterIssuer do)."""
    plural = kind.lower() + "s"
    version = CM_VERSION if group == CM_GROUP else "v1"
    return Resource(group, version, plural, namespaced=not kind.endswith("ClusterIssuer"))
