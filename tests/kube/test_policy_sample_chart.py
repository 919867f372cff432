"""The chart's sample policy set (``samplePolicies.enabled`` with ``app.policySource: kubernetes``) is accepted by
the real API server's validation of the CRDs (schema, CEL rules, strict fields), and nothing of it is pruned."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.helm.test_chart import render
from tests.kube.test_policy_crds import GROUP, VERSION, policy_crds  # noqa: F401  # the CRDs, installed once


@pytest.mark.usefixtures("policy_crds")
def test_the_charts_sample_objects_pass_the_api_servers_validation(
    helm: str, kube_api: client.ApiClient, make_namespace: Any
) -> None:
    root = make_namespace("sample")
    docs = render(helm, "samplePolicies.enabled=true", "app.policySource=kubernetes", f"app.policyRootNamespace={root}")
    samples = [d for d in docs if d["apiVersion"] == f"{GROUP}/{VERSION}"]
    assert [d["kind"] for d in samples] == ["IdentityPolicy"]
    api = client.CustomObjectsApi(kube_api)
    for sample in samples:
        stored = api.create_namespaced_custom_object(
            GROUP, VERSION, root, "identitypolicies", sample, dry_run="All", field_validation="Strict"
        )
        assert isinstance(stored, dict)
        assert stored["spec"] == sample["spec"]  # accepted as rendered: no field pruned or defaulted away
        assert stored["metadata"]["annotations"] == sample["metadata"]["annotations"]
