"""``meshsigner serve --policy-source kubernetes`` on the real plane: IdentityPolicy objects decide, a change takes
effect without a restart, a policy the API server accepts but the compiler rejects keeps the last good set
deciding, a namespaced grant stays in its namespace, and decision records name the policy object.

Every server here reads only the objects carrying its own test label (``--policy-label-selector``): the plane is
shared, and other tests' policies (kept in namespaces that never finish terminating) are none of its business.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from tests.e2e.calls import create
from tests.kube.test_policy_crds import GROUP, VERSION, policy_crds  # noqa: F401  # the CRDs, installed once
from tests.support.csr_builder import make_csr
from tests.support.processes import ServerProcess, start_server
from tests.support.waiting import wait_for

OWN = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
TEST_LABEL = "meshsigner.io/test"


def identity_policy(name: str, label: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IdentityPolicy",
        "metadata": {"name": name, "labels": {TEST_LABEL: label}},
        "spec": spec,
    }


def own_identity_for(*namespaces: str) -> dict[str, Any]:
    return {
        "subjects": {"namespaces": list(namespaces)},
        "rules": [{"name": "own", "effect": "Allow", "identities": [OWN]}],
    }


class Policies:
    """Creates and edits one test's IdentityPolicy objects."""

    def __init__(self, kube_api: client.ApiClient, label: str) -> None:
        self.api = client.CustomObjectsApi(kube_api)
        self.label = label

    def create(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = identity_policy(name, self.label, spec)
        created = self.api.create_namespaced_custom_object(GROUP, VERSION, namespace, "identitypolicies", body)
        assert isinstance(created, dict)
        return created

    def replace_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        patch = {"spec": spec}
        patched = self.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "identitypolicies", name, patch)
        assert isinstance(patched, dict)
        return patched

    def delete(self, namespace: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "identitypolicies", name)


def serve_policy_objects(
    kubeconfig: str, tmp_path: Path, root: str, label: str, *extra: str, lease: str = ""
) -> ServerProcess:
    """``meshsigner serve`` (local CA) deciding from the policy objects labelled ``label``, with ``root`` as the
    root namespace; ``lease``: take part in leader election on a Lease of that name in ``root`` (the cluster duties,
    root ConfigMaps only where the absent test label says)."""
    flags = [
        "--signer=local",
        f"--local-ca-dir={tmp_path / 'ca'}",
        "--authenticator=tokenreview",
        f"--kubeconfig={kubeconfig}",
        "--policy-source=kubernetes",
        f"--policy-root-namespace={root}",
        f"--policy-label-selector={TEST_LABEL}={label}",
        *extra,
    ]
    if lease:
        flags += [
            f"--leader-election-namespace={root}",
            f"--leader-election-name={lease}",
            f"--configmap-namespace-selector={TEST_LABEL}={label}",
        ]
    return start_server(flags, tmp_path / "serve.log")


def ask(server: ServerProcess, stub: Any, namespace: str, token: str, dns: tuple[str, ...] = ()) -> grpc.StatusCode:
    csr = make_csr([f"spiffe://cluster.local/ns/{namespace}/sa/web"], dns=dns)
    return create(stub, csr, token)[0]


def reloads(server: ServerProcess, result: str) -> float:
    return server.metric(f'policy_reload_total{{result="{result}"}}')


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.usefixtures("policy_crds")
def test_policy_objects_decide_live(
    kube_plane: Any,
    kube_api: client.ApiClient,
    make_namespace: Any,
    make_service_account: Any,
    mint_token: Any,
    tmp_path: Path,
) -> None:
    label = uuid.uuid4().hex[:12]
    root, team, other = make_namespace("polroot"), make_namespace("team"), make_namespace("other")
    for namespace in (team, other):
        make_service_account(namespace, "web")
    policies = Policies(kube_api, label)
    policies.create(root, "baseline", own_identity_for(team))
    decisions = tmp_path / "decisions.jsonl"
    server = serve_policy_objects(kube_plane.kubeconfig, tmp_path, root, label, f"--decision-log={decisions}")
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        team_token, other_token = mint_token(team, "web"), mint_token(other, "web")
        assert ask(server, stub, team, team_token) is grpc.StatusCode.OK
        assert ask(server, stub, other, other_token) is grpc.StatusCode.PERMISSION_DENIED

        # Applying a policy changes the next decision, without a restart.
        successes = reloads(server, "success")
        granted = policies.create(root, "other-grant", own_identity_for(other))
        wait_for(lambda: reloads(server, "success") > successes, "the new policy object loaded", timeout=30)
        assert ask(server, stub, other, other_token) is grpc.StatusCode.OK

        def allowed_record() -> dict[str, Any] | None:
            return next((r for r in records(decisions) if r["caller"]["namespace"] == other and r["issued"]), None)

        wait_for(lambda: allowed_record() is not None, "the decision record of the allowed request", timeout=15)
        record = allowed_record()
        assert record is not None
        assert record["matched"] == "other-grant/own"
        assert record["policyObject"] == {
            "kind": "IdentityPolicy",
            "namespace": root,
            "name": "other-grant",
            "generation": granted["metadata"]["generation"],
            "resourceVersion": granted["metadata"]["resourceVersion"],
        }

        # A namespaced grant (in team) cannot reach another namespace: its DNS grant serves team's workloads only.
        successes = reloads(server, "success")
        dns_rule = {
            "name": "dns",
            "effect": "Allow",
            "identities": [OWN],
            "dnsNames": ["{serviceAccount}.{namespace}.svc"],
        }
        policies.create(team, "team-dns", {"rules": [dns_rule]})
        wait_for(lambda: reloads(server, "success") > successes, "the namespaced policy loaded", timeout=30)
        assert ask(server, stub, team, team_token, dns=(f"web.{team}.svc",)) is grpc.StatusCode.OK
        assert ask(server, stub, other, other_token, dns=(f"web.{other}.svc",)) is grpc.StatusCode.PERMISSION_DENIED
        # ... and one that tries to is refused by the compiler, as a whole set: the last good set keeps deciding
        failures = reloads(server, "error")
        policies.create(team, "team-reach", {"subjects": {"namespaces": [other]}, "rules": [dns_rule]})
        wait_for(lambda: reloads(server, "error") > failures, "the overreaching policy rejected", timeout=30)
        assert "IdentityPolicy " + team + "/team-reach: spec.subjects.namespaces" in server.log()
        assert ask(server, stub, other, other_token, dns=(f"web.{other}.svc",)) is grpc.StatusCode.PERMISSION_DENIED
        policies.delete(team, "team-reach")

        # A policy the API server accepts but meshsigner's compiler rejects (a template variable that does not
        # exist) would, if applied, drop team's grant: the last good set keeps deciding instead.
        wait_for(lambda: reloads(server, "success") > successes + 1, "the set without team-reach loaded", timeout=30)
        failures = reloads(server, "error")
        broken = {
            "subjects": {"namespaces": ["nobody"]},
            "rules": [
                {"name": "own", "effect": "Allow", "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{nope}"]}
            ],
        }
        policies.replace_spec(root, "baseline", broken)
        wait_for(lambda: reloads(server, "error") > failures, "the broken policy rejected", timeout=30)
        assert f"IdentityPolicy {root}/baseline: spec.rules[0].identities[0]" in server.log()
        assert ask(server, stub, team, team_token) is grpc.StatusCode.OK
        assert server.ready()
    finally:
        server.stop()


@pytest.mark.usefixtures("policy_crds")
def test_the_leader_writes_each_policy_objects_status(
    kube_plane: Any, kube_api: client.ApiClient, make_namespace: Any, tmp_path: Path
) -> None:
    label = uuid.uuid4().hex[:12]
    root = make_namespace("polstatus")
    policies = Policies(kube_api, label)
    baseline = policies.create(root, "baseline", own_identity_for(root))
    server = serve_policy_objects(kube_plane.kubeconfig, tmp_path, root, label, lease=f"policy-status-{label}")

    def status_of(name: str) -> dict[str, Any]:
        obj = policies.api.get_namespaced_custom_object(GROUP, VERSION, root, "identitypolicies", name)
        assert isinstance(obj, dict)
        found = obj.get("status") or {}
        assert isinstance(found, dict)
        return found

    def condition(name: str, kind: str) -> dict[str, Any]:
        return next((c for c in status_of(name).get("conditions") or [] if c["type"] == kind), {})

    try:
        generation = baseline["metadata"]["generation"]
        wait_for(lambda: condition("baseline", "Ready").get("status") == "True", "baseline Ready", timeout=60)
        assert condition("baseline", "Accepted")["status"] == "True"
        assert condition("baseline", "Ready")["observedGeneration"] == generation
        assert status_of("baseline")["ruleCount"] == 1

        broken_rule = {
            "name": "own",
            "effect": "Allow",
            "identities": ["spiffe://{trustDomain}/ns/{namespace}/sa/{nope}"],
        }
        policies.create(root, "broken", {"rules": [broken_rule]})
        wait_for(lambda: condition("broken", "Accepted").get("status") == "False", "broken not accepted", timeout=30)
        assert condition("broken", "Accepted")["message"].startswith("spec.rules[0].identities[0]: ")
        assert condition("broken", "Ready")["status"] == "False"
        assert condition("baseline", "Ready")["status"] == "True"  # its generation is still the one in force
        events = client.CoreV1Api(kube_api)

        def rejection_events() -> list[Any]:
            listed = events.list_namespaced_event(root, field_selector="involvedObject.name=broken").items
            return [e for e in listed if e.reason == "Rejected" and e.type == "Warning"]

        wait_for(lambda: bool(rejection_events()), "a Rejected event on broken", timeout=30)
        assert "spec.rules[0].identities[0]" in rejection_events()[0].message

        policies.delete(root, "broken")
        edited = policies.replace_spec(root, "baseline", own_identity_for(root, "elsewhere"))
        wait_for(
            lambda: condition("baseline", "Ready").get("observedGeneration") == edited["metadata"]["generation"],
            "the edited generation observed",
            timeout=30,
        )
        assert condition("baseline", "Ready")["status"] == "True"
    finally:
        server.stop()


@pytest.mark.usefixtures("policy_crds")
def test_policy_lint_reads_the_live_set(
    kube_plane: Any, kube_api: client.ApiClient, make_namespace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from signer.cli import main

    label = uuid.uuid4().hex[:12]
    root, team = make_namespace("pollint"), make_namespace("team")
    policies = Policies(kube_api, label)
    policies.create(root, "baseline", own_identity_for(team))
    argv = ["policy", "lint", f"--kubeconfig={kube_plane.kubeconfig}", f"--label-selector={TEST_LABEL}={label}"]
    argv.append(f"--root-namespace={root}")
    assert main(argv) == 0
    assert "live policy set valid: 1 policies, 1 rules, revision sha256:" in capsys.readouterr().out
    policies.create(team, "reach", {"subjects": {"namespaces": [root]}, "rules": own_identity_for(team)["rules"]})
    assert main(argv) == 1
    assert f"IdentityPolicy {team}/reach: spec.subjects.namespaces: a policy in namespace" in capsys.readouterr().out
