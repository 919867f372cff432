"""The REST paths the seam builds for the objects the cluster controllers write."""

from __future__ import annotations

import pytest

from bridge.kube import CERTIFICATES, CONFIG_MAPS, LEASES, NAMESPACES, SECRETS, cluster_trust_bundles, object_path


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
