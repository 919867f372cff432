"""The generated policy CRDs on the real API server: they install, accept the reference policies, and refuse bad
objects at apply time through the schema and the CEL validation rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
SECTION_2_1 = REPO / "tests" / "policies" / "fixtures" / "policies"
GROUP, VERSION = "meshsigner.io", "v1alpha1"


@pytest.fixture(scope="module")
def policy_crds(kube_api: client.ApiClient, wait_for: Any) -> None:
    """Create or replace both CRDs (cluster-wide objects: other sessions on the plane get the same files)."""
    extensions = client.ApiextensionsV1Api(kube_api)
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        try:
            current = extensions.read_custom_resource_definition(name)
            assert current.metadata is not None
            crd["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(name, crd)
        except ApiException as exc:
            if exc.status != 404:
                raise
            extensions.create_custom_resource_definition(crd)

        def established(name: str = name) -> bool:
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status is not None else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, timeout=60, what=f"CRD {name} established")


def fixture_document(name: str) -> dict[str, Any]:
    document = yaml.safe_load((SECTION_2_1 / name).read_text())
    assert isinstance(document, dict)
    return document


def create_policy(kube_api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    api = client.CustomObjectsApi(kube_api)
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "identitypolicies", body, field_validation="Strict"
    )
    assert isinstance(created, dict)
    return created


def refusal(kube_api: client.ApiClient, namespace: str, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        create_policy(kube_api, namespace, body)
    assert caught.value.status in (400, 422), caught.value.body
    return str(json.loads(caught.value.body or "{}")["message"])


@pytest.mark.usefixtures("policy_crds")
def test_the_reference_policies_are_accepted_and_mode_defaults_to_enforce(
    kube_api: client.ApiClient, make_namespace: Any
) -> None:
    namespace = make_namespace("crd")
    for name in ("mesh-baseline.yaml", "payments-services.yaml", "compliance-denies.yaml", "tighten-to-12h.yaml"):
        create_policy(kube_api, namespace, fixture_document(name))
    without_mode = fixture_document("mesh-baseline.yaml")
    without_mode["metadata"]["name"] = "no-mode"
    del without_mode["spec"]["mode"]
    assert create_policy(kube_api, namespace, without_mode)["spec"]["mode"] == "Enforce"


@pytest.mark.usefixtures("policy_crds")
def test_kubectl_get_columns(kube_api: client.ApiClient, make_namespace: Any) -> None:
    namespace = make_namespace("crd")
    create_policy(kube_api, namespace, fixture_document("payments-services.yaml"))
    assert table_row(kube_api, namespace)[:4] == ["payments-services", "Enforce", None, None]
    # The status writer (the leader, later) fills these in; the columns show them.
    status = {"status": {"ruleCount": 3, "conditions": [{"type": "Ready", "status": "True"}]}}
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "identitypolicies", "payments-services", status
    )
    assert table_row(kube_api, namespace)[:4] == ["payments-services", "Enforce", 3, "True"]


def table_row(kube_api: client.ApiClient, namespace: str) -> list[Any]:
    """What kubectl get shows: the server renders the CRD's printer columns as a Table."""
    method, url, headers, body, post = kube_api.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/identitypolicies",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    response = kube_api.call_api(method, url, header_params=headers, body=body, post_params=post)
    table = json.loads(response.read() or b"{}")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Mode", "Rules", "Ready", "Age"]
    cells = table["rows"][0]["cells"]
    assert isinstance(cells, list)
    return cells


@pytest.mark.usefixtures("policy_crds")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(mode="Enforced"), 'spec.mode: Unsupported value: "Enforced"'),
        (lambda s: s.update(subject={}), 'unknown field "spec.subject"'),
        (lambda s: s["rules"][0].pop("identities"), "an Allow rule must list the identities it grants"),
        (
            lambda s: s["rules"].append({"name": "d", "effect": "Deny", "duration": {"max": "1h"}}),
            "only Allow rules take trustDomains, allowWildcardDNSNames, allowCrossNamespace, duration, usages",
        ),
        (lambda s: s["rules"].append(copy.deepcopy(s["rules"][0])), "Duplicate value"),
        (lambda s: s["rules"][0]["duration"].update(max="1 day"), "spec.rules[0].duration.max"),
        (lambda s: s.update(priority=10**7), "spec.priority: Invalid value"),
        (lambda s: s["rules"][0].update(when=[]), "spec.rules[0].when"),
    ],
)
def test_bad_policies_are_refused_at_apply(
    kube_api: client.ApiClient, make_namespace: Any, change: Any, message: str
) -> None:
    namespace = make_namespace("crd")
    body = fixture_document("payments-services.yaml")
    change(body["spec"])
    assert message in refusal(kube_api, namespace, body)


@pytest.mark.usefixtures("policy_crds")
def test_policy_settings_is_a_cluster_singleton(kube_api: client.ApiClient) -> None:
    api = client.CustomObjectsApi(kube_api)
    settings = fixture_document("settings.yaml")
    wrong = {**settings, "metadata": {"name": "other"}}
    with pytest.raises(ApiException) as caught:
        api.create_cluster_custom_object(GROUP, VERSION, "policysettings", wrong)
    assert "PolicySettings is a singleton: its name must be settings" in str(caught.value.body)
    alias = copy.deepcopy(settings)
    alias["spec"]["trustDomainAliases"] = ["cluster.local"]
    with pytest.raises(ApiException) as caught:
        api.create_cluster_custom_object(GROUP, VERSION, "policysettings", alias)
    assert "trustDomainAliases must not list the primary trust domain" in str(caught.value.body)
    try:
        created = api.create_cluster_custom_object(GROUP, VERSION, "policysettings", settings)
        assert isinstance(created, dict) and created["spec"]["trustDomain"] == "cluster.local"
    finally:
        try:
            api.delete_cluster_custom_object(GROUP, VERSION, "policysettings", "settings")
        except ApiException as exc:
            if exc.status != 404:
                raise
