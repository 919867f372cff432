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


# The core resources the seam serves: any other core resource is refused (ValueError) before a request is made.
SERVED_CORE = frozenset({"configmaps", "namespaces", "pods", "secrets", "serviceaccounts"})
# The core resources one list or watch may read in every namespace at once (namespace None); never Secrets.
LISTED_IN_EVERY_NAMESPACE = frozenset({"configmaps", "pods", "serviceaccounts"})
# The custom resources (group, plural) read that way: the policy objects (--policy-source kubernetes).
CUSTOM_LISTED_IN_EVERY_NAMESPACE = frozenset({("meshsigner.io", "identitypolicies")})


def _group_path(resource: Resource) -> str:
    r = resource
    if r.is_core and r.plural not in SERVED_CORE:
        raise ValueError(f"the Kubernetes seam does not serve core {r.plural}")
    return f"/api/{r.version}" if r.is_core else f"/apis/{r.group}/{r.version}"


def object_path(resource: Resource, namespace: str | None, name: str = "") -> str:
    """The REST path of a resource's collection in one namespace (no ``name``) or of one object."""
    r = resource
    base = _group_path(r)
    if r.namespaced:
        if not namespace:
            raise ValueError(f"{r.plural} is namespaced: a namespace is required")
        base += f"/namespaces/{namespace}"
    path = f"{base}/{r.plural}"
    return f"{path}/{name}" if name else path


def collection_path(resource: Resource, namespace: str | None) -> str:
    """The REST path a list or watch reads: ``namespace`` None is every namespace, for the core resources allowed
    that; any other namespaced resource needs its namespace."""
    r = resource
    listed = (
        r.plural in LISTED_IN_EVERY_NAMESPACE if r.is_core else (r.group, r.plural) in CUSTOM_LISTED_IN_EVERY_NAMESPACE
    )
    if namespace is None and r.namespaced and listed:
        return f"{_group_path(r)}/{r.plural}"
    return object_path(r, namespace)


# certificates.k8s.io/v1 CertificateSigningRequests: cluster-scoped, read and written by path like any other
# resource; the approval subresource has its own call (KubeClient.update_approval)
CERTIFICATE_SIGNING_REQUESTS = Resource(CSR_GROUP, "v1", "certificatesigningrequests", namespaced=False)


def issuer_resource(kind: str, group: str) -> Resource:
    """Issuer/ClusterIssuer of cert-manager, or an external issuer following the same naming (plural = kind + s;
    cluster-scoped when the kind ends in ``ClusterIssuer``, as AWSPCAClusterIssuer or GoogleCASClusterIssuer do)."""
    plural = kind.lower() + "s"
    version = CM_VERSION if group == CM_GROUP else "v1"
    return Resource(group, version, plural, namespaced=not kind.endswith("ClusterIssuer"))
