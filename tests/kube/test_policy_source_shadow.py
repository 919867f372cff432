"""The shadow set with ``--policy-source kubernetes`` on the real plane: IdentityPolicy objects labelled
``meshsigner.io/policy-set: <name>`` form the set ``settings.shadowPolicySet`` names; a shadow policy that would deny
shows up as ``shadow.difference`` in the decision records while the enforced decision stands, and the leader's
status names the shadow set.

PolicySettings is a cluster singleton (``settings``) shared by the whole plane: this test creates it carrying its
own test label (other servers select by theirs, so they never see it), waits for it to be free, and deletes it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kube.test_policy_crds import GROUP, VERSION, policy_crds  # noqa: F401  # the CRDs, installed once
from tests.kube.test_policy_source import (
    TEST_LABEL,
    Policies,
    ask,
    own_identity_for,
    records,
    serve_policy_objects,
)
from tests.support.waiting import wait_for

POLICY_SET_LABEL = "meshsigner.io/policy-set"


def create_settings(api: client.CustomObjectsApi, label: str, shadow: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PolicySettings",
        "metadata": {"name": "settings", "labels": {TEST_LABEL: label}},
        "spec": {"trustDomain": "cluster.local", "shadowPolicySet": shadow},
    }

    def created() -> bool:
        try:
            api.create_cluster_custom_object(GROUP, VERSION, "policysettings", body)
        except ApiException as exc:
            if exc.status == 409:  # another test's singleton: wait until it is deleted
                return False
            raise
        return True

    wait_for(created, "the PolicySettings singleton free for this test", timeout=120)


@pytest.mark.usefixtures("policy_crds")
def test_a_labelled_shadow_policy_that_would_deny_is_recorded_and_the_enforced_decision_stands(
    kube_plane: Any,
    kube_api: client.ApiClient,
    make_namespace: Any,
    make_service_account: Any,
    mint_token: Any,
    tmp_path: Path,
) -> None:
    label = uuid.uuid4().hex[:12]
    shadow_name = f"next-{label}"
    root, team = make_namespace("polshadow"), make_namespace("team")
    make_service_account(team, "web")
    policies = Policies(kube_api, label)
    policies.create(root, "baseline", own_identity_for(team))
    freeze = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IdentityPolicy",
        "metadata": {"name": "freeze", "labels": {TEST_LABEL: label, POLICY_SET_LABEL: shadow_name}},
        "spec": {"rules": [{"name": "freeze", "effect": "Deny", "subjects": {"namespaces": [team]}}]},
    }
    policies.api.create_namespaced_custom_object(GROUP, VERSION, root, "identitypolicies", freeze)
    create_settings(policies.api, label, shadow_name)
    decisions = tmp_path / "decisions.jsonl"
    server = serve_policy_objects(
        kube_plane.kubeconfig, tmp_path, root, label, f"--decision-log={decisions}", lease=f"policy-shadow-{label}"
    )

    def status_of(name: str) -> dict[str, Any]:
        obj = policies.api.get_namespaced_custom_object(GROUP, VERSION, root, "identitypolicies", name)
        assert isinstance(obj, dict)
        return dict(obj.get("status") or {})

    def settings_status() -> dict[str, Any]:
        obj = policies.api.get_cluster_custom_object(GROUP, VERSION, "policysettings", "settings")
        assert isinstance(obj, dict)
        return dict(obj.get("status") or {})

    def ready_reason(name: str) -> str | None:
        ready: dict[str, Any] = next((c for c in status_of(name).get("conditions") or [] if c["type"] == "Ready"), {})
        return ready.get("reason")

    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        assert ask(server, stub, team, mint_token(team, "web")) is grpc.StatusCode.OK  # the enforced set allows

        def shadow_record() -> dict[str, Any] | None:
            return next((r for r in records(decisions) if r["caller"]["namespace"] == team and r["issued"]), None)

        wait_for(lambda: shadow_record() is not None, "the decision record of the allowed request", timeout=15)
        record = shadow_record()
        assert record is not None and record["decision"] == "Allow"
        assert record["shadow"]["policySet"] == shadow_name
        assert record["shadow"]["decision"] == "Deny" and record["shadow"]["difference"] == "WOULD_DENY"
        assert record["shadow"]["matched"] == "freeze/freeze"

        # the leader's status: the shadow policy is in the shadow set, the settings show its revision
        wait_for(lambda: ready_reason("freeze") == "InShadowSet", "freeze Ready in the shadow set", timeout=60)
        assert shadow_name in next(c for c in status_of("freeze")["conditions"] if c["type"] == "Ready")["message"]
        assert ready_reason("baseline") == "InForce"
        wait_for(lambda: "shadowRevision" in settings_status(), "the settings' shadowRevision", timeout=30)
        assert settings_status()["shadowRevision"] == record["shadow"]["policySetRevision"]
    finally:
        server.stop()
        policies.api.delete_cluster_custom_object(GROUP, VERSION, "policysettings", "settings")
