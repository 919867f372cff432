"""The REST paths the seam builds for the objects the cluster controllers write."""

from __future__ import annotations

import pytest

from bridge.kube import (
    CERTIFICATES,
    CONFIG_MAPS,
    LEASES,
    NAMESPACES,
    PODS,
    SECRETS,
    Resource,
    cluster_trust_bundles,
    object_path,
)
from bridge.kube.resources import collection_path


def test_paths_of_core_group_and_cluster_scoped_objects() -> None:
    assert (
        object_path(CONFIG_MAPS, "app", "istio-ca-root-cert") == "/api/v1/namespaces/app/configmaps/istio-ca-root-cert"
    )
    assert object_path(SECRETS, "istio-system") == "/api/v1/namespaces/istio-system/secrets"
    assert object_path(NAMESPACES, None, "app") == "/api/v1/namespaces/app"
    assert object_path(LEASES, "istio-system", "istio-csr") == (
        "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/istio-csr"
    )
    assert object_path(CERTIFICATES, "istio-system", "istiod-dynamic") == (
        "/apis/cert-manager.io/v1/namespaces/istio-system/certificates/istiod-dynamic"
    )
    assert object_path(cluster_trust_bundles("v1beta1"), None, "mesh") == (
        "/apis/certificates.k8s.io/v1beta1/clustertrustbundles/mesh"
    )


def test_a_namespaced_resource_needs_a_namespace() -> None:
    with pytest.raises(ValueError, match="namespace is required"):
        object_path(LEASES, None, "istio-csr")


def test_a_core_resource_the_seam_does_not_serve_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="does not serve core services"):
        object_path(Resource("", "v1", "services"), "app", "web")
    with pytest.raises(ValueError, match="does not serve core services"):
        collection_path(Resource("", "v1", "services"), None)


def test_lists_span_every_namespace_only_where_allowed() -> None:
    assert collection_path(PODS, None) == "/api/v1/pods"
    assert collection_path(PODS, "app") == "/api/v1/namespaces/app/pods"
    assert collection_path(NAMESPACES, None) == "/api/v1/namespaces"
    with pytest.raises(ValueError, match="namespace is required"):
        collection_path(SECRETS, None)  # never every namespace's Secrets at once
    with pytest.raises(ValueError, match="namespace is required"):
        collection_path(CERTIFICATES, None)
