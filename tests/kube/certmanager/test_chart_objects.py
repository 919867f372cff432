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
    "istio-csr values file": (),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_rendered_object_is_accepted_by_the_api_server(helm, kube_api, make_namespace, case):
    release_ns, cert_ns, istio_ns = make_namespace("release"), make_namespace("certs"), make_namespace("istio")
    values = (
        *MATRIX[case], f"app.certmanager.namespace={cert_ns}", f"app.istio.namespace={istio_ns}", "image.tag=0.1.0",
        f"nameOverride=meshsigner-{case.split()[0].rstrip(',')}",
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
    if case == "everything on":
        assert sorted(k.split("/")[0] for k in not_served) == ["PrometheusRule", "ServiceMonitor"]
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Certificate"} <= {a.split("/")[0] for a in accepted}
