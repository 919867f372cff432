"""Every object the chart renders, for the default values, an istio-csr values file and a matrix of feature toggles,
is accepted by the real API server (server-side dry run: schema, defaulting and admission, nothing persisted).
Kinds whose API the test plane does not serve (prometheus-operator's ServiceMonitor and PrometheusRule) are listed
and skipped, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tests.helm.test_chart import render

ISTIO_CSR_VALUES = Path(__file__).resolve().parents[2] / "helm" / "fixtures" / "istio-csr-values.yaml"
NOT_SERVED_HERE = {"monitoring.coreos.com/v1"}

MATRIX = {
    "defaults": (),
    "everything on": (
        "app.certmanager.approveCertificateRequests=true", "app.runtimeConfiguration.create=true",
        "app.runtimeConfiguration.name=istio-issuer", "app.server.caTrustedNodeAccounts=istio-system/ztunnel",
        "app.policies.a\\.yaml=x", "autoscaling.enabled=true", "podDisruptionBudget.enabled=true",
        "dashboards.enabled=true", "prometheusRule.enabled=true", "app.metrics.service.servicemonitor.enabled=true",
        "app.decisionLog=/tmp/decisions.jsonl", "extraEnv[0].name=MESHSIGNER_TOKEN_ISSUER",
        "extraEnv[0].value=https://issuer.example",
    ),
    "local signer, offline tokens": (
        "app.signer=local", "app.local.caSecretName=cacerts", "replicaCount=2", "app.server.authenticator=jwks",
        "app.server.jwks.file=/jwks/jwks.json", "app.server.jwks.issuer=https://issuer.example",
        "app.tls.istiodCertificateEnable=false",
    ),
    "offline in-cluster authentication, client certificates": (
        "app.server.authenticator=jwks", "app.server.authenticators.enableClientCert=true",
        "app.tls.rootCAFile=/var/run/secrets/istio-csr/ca.pem", "app.server.caTrustedNodeAccounts=istio-system/ztunnel",
        "app.shutdownGracePeriod=1m", "app.server.tokenPrescreen=false",
    ),
    "cluster duties, dynamic istiod certificate": (
        "app.tls.istiodCertificateEnable=dynamic", "app.controller.clusterTrustBundleName=example.com:mesh:roots",
        "app.controller.configmapNamespaceSelector=istio-injection=enabled", "app.controller.maxConcurrentReconciles=4",
        "app.tls.istiodPrivateKeyAlgorithm=ECDSA", "app.tls.istiodPrivateKeySize=256",
        "app.istio.revisions={default,canary}",
        "app.certmanager.additionalAnnotations[0].name=team", "app.certmanager.additionalAnnotations[0].value=mesh",
    ),
    "local signer, istiod secret, unlinked bundle": (
        "app.signer=local", "app.local.caSecretName=cacerts", "app.tls.istiodCertificateEnable=dynamic",
        "app.controller.clusterTrustBundleName=mesh-roots", "app.controller.leaderElectionName=meshsigner-b",
    ),
    "no cluster duties": ("app.controller.clusterDuties=false",),
    "istio-csr values file": (),
}  # fmt: skip
DUTY_ROLES = {"leader-election", "istiod-certificate"}
DUTY_CASES = {
    "cluster duties, dynamic istiod certificate": DUTY_ROLES,
    "local signer, istiod secret, unlinked bundle": DUTY_ROLES,
    "local signer, offline tokens": set(),  # a pinned JWKS file: no Kubernetes access, no duties
    "no cluster duties": set(),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_rendered_object_is_accepted_by_the_api_server(helm, kube_api, make_namespace, case):
    release_ns, cert_ns, istio_ns = make_namespace("release"), make_namespace("certs"), make_namespace("istio")
    lease_ns = make_namespace("lease")
    values = (
        *MATRIX[case], f"app.certmanager.namespace={cert_ns}", f"app.istio.namespace={istio_ns}", "image.tag=0.1.0",
        f"app.controller.leaderElectionNamespace={lease_ns}", f"nameOverride=meshsigner-{case.split()[0].rstrip(',')}",
    )  # fmt: skip
    files = (ISTIO_CSR_VALUES,) if case == "istio-csr values file" else ()
    docs = render(helm, *values, namespace=release_ns, value_files=files)
    api = dynamic.DynamicClient(kube_api)
    accepted, not_served = [], []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] in NOT_SERVED_HERE:
            not_served.append(what)
            continue
        try:
            resource = api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:
            pytest.fail(f"{what}: {doc['apiVersion']} is not served by the API server")
        namespace = doc["metadata"].get("namespace") if resource.namespaced else None
        resource.create(body=doc, namespace=namespace, dry_run="All")
        accepted.append(what)
    assert any(a.startswith("Deployment/") for a in accepted)
    roles = {duty for duty in DUTY_ROLES for a in accepted if a.startswith("Role/") and a.endswith(f"-{duty}")}
    if case in DUTY_CASES:
        assert roles == DUTY_CASES[case], accepted
    if case == "everything on":
        assert sorted(k.split("/")[0] for k in not_served) == ["PrometheusRule", "ServiceMonitor"]
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Certificate"} <= {a.split("/")[0] for a in accepted}
